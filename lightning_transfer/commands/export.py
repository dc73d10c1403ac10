"""``lightning-transfer export --ckpt_path X --format onnx [--out FILE]``: a checkpoint as an ONNX model
that ONNX Runtime serves without this package or torch, checked against PyTorch before it is kept.

The graph takes normalized float32 images ``images`` (N, 3, S, S), N free, and returns ``probabilities``
(N, classes), the softmax inside the graph. What it takes to turn a photo into that input travels in the
model's ``metadata_props``: ``class_names`` (JSON list), ``image_size`` (S), ``mean`` and ``std`` (JSON
lists, for pixels scaled to [0, 1]) and ``interpolation`` (``bilinear`` or ``bicubic``, the square resize).

torch's exporter based on ``torch.export`` (``dynamo=True``, torch's default and recommended one; it
needs onnxscript) is used: the TorchScript one (``dynamo=False``) is deprecated and slated for removal.
Both run offline.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from lightning_transfer.callbacks import checkpoint_file
from lightning_transfer.data import list_predict_images, load_rgb
from lightning_transfer.interpret import image_batch
from lightning_transfer.model import TransferClassifier, load_model
from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.files import write_atomically

INPUT, OUTPUT = "images", "probabilities"
PARITY_LIMIT = 1e-4
"""Largest probability difference between ONNX Runtime and PyTorch accepted in fp32."""
PARITY_IMAGES = 8
MISSING = "export needs onnx, onnxscript and onnxruntime; run pip install 'lightning-transfer[export]'"


class Probabilities(nn.Module):
    """The classifier with its softmax, so the exported graph ends in probabilities (in float32)."""

    def __init__(self, model: TransferClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(self.model(images))


def metadata(model: TransferClassifier) -> dict[str, str]:
    """The preprocessing a photo needs before the graph, as ONNX ``metadata_props`` (strings)."""
    preprocessing = model.preprocessing
    return {
        "class_names": json.dumps(model.class_names),
        "image_size": str(model.image_size),
        "mean": json.dumps(list(preprocessing.mean)),
        "std": json.dumps(list(preprocessing.std)),
        "interpolation": preprocessing.interpolation.value,
    }


def export_onnx(model: TransferClassifier, path: Path) -> None:
    """Write ``model`` (eval, fp32, CPU) as one ONNX file, dynamic batch axis, metadata attached."""
    import onnx

    size = model.image_size
    example = torch.zeros(2, 3, size, size)
    program = torch.onnx.export(
        Probabilities(model).eval(), (example,), input_names=[INPUT], output_names=[OUTPUT], dynamo=True,
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, verbose=False,
    )
    graph = program.model_proto
    onnx.helper.set_model_props(graph, metadata(model))
    onnx.save(graph, str(path))  # weights inside: a VGG16 head is far below ONNX's 2 GB limit


def parity_images(folder: str | None, count: int = PARITY_IMAGES) -> tuple[list[Image.Image], str]:
    """Up to ``count`` images from ``folder``, else generated ones (smooth colors plus noise), and what they are."""
    if folder:
        paths = list_predict_images(folder)[:count]
        return [load_rgb(path) for path in paths], f"{len(paths)} images from {folder}"
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        ramp = np.linspace(0, 1, 240)[None, :, None] * rng.uniform(0, 1, 3) + rng.uniform(0, 0.5, 3)
        pixels = np.clip(ramp + rng.normal(0, 0.15, (180, 240, 3)), 0, 1)
        images.append(Image.fromarray((pixels * 255).astype(np.uint8)))
    return images, f"{count} generated images"


def largest_difference(model: TransferClassifier, path: Path, images: Sequence[Image.Image]) -> float:
    """Largest absolute probability difference, ONNX Runtime vs PyTorch, on the same model inputs."""
    import onnxruntime

    batch = image_batch(model.backbone, images, model.image_size)
    with torch.inference_mode():
        expected = Probabilities(model)(batch).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (served,) = session.run([OUTPUT], {INPUT: batch.numpy()})
    return float(np.abs(served - expected).max())


def check_parity(model: TransferClassifier, path: Path, images: Sequence[Image.Image], what: str) -> float:
    difference = largest_difference(model, path, images)
    verdict = "ok" if difference <= PARITY_LIMIT else "FAILED"
    print(f"parity, ONNX Runtime vs PyTorch on {what}: largest probability difference {difference:.2e} "
          f"(limit {PARITY_LIMIT:g}): {verdict}")
    if difference > PARITY_LIMIT:
        raise UserError(f"{path}: ONNX Runtime's probabilities differ from PyTorch's by {difference:.2e}, more than "
                        f"{PARITY_LIMIT:g}; the export is not kept (please report it with the torch and onnx versions)")
    return difference


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lightning-transfer export",
        description="Export a checkpoint for serving (ONNX), then check it against PyTorch.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `lightning-transfer fit`")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="what to export to (default onnx)")
    parser.add_argument("--out", type=Path, help="file to write (default: the checkpoint's path with .onnx)")
    parser.add_argument("--images", help="image file or folder for the parity check (default: generated images)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(MISSING) from None
    args.ckpt_path = checkpoint_file(args.ckpt_path)
    out = args.out or Path(args.ckpt_path).with_suffix(".onnx")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists; pass --overwrite or another --out file")
    model = load_model(args.ckpt_path)
    images, what = parity_images(args.images)
    print(f"exporting {args.ckpt_path} ({model.hparams.backbone}, {model.image_size} px, "
          f"classes {', '.join(model.class_names)}) to ONNX")

    def write(temp: Path) -> None:  # the file keeps its final name only once it passed the check
        export_onnx(model, temp)
        check_parity(model, temp, images, what)
        temp.chmod(0o644)  # a model to ship, not a private temp file

    write_atomically(out, write)
    print(f"wrote {out}")
