"""``lightning-transfer export``: ONNX with a dynamic batch axis, preprocessing metadata, parity with PyTorch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from conftest import REPO, TINY_SIZE, run_cli, synthetic_photo
from lightning_transfer.commands import export
from lightning_transfer.data import load_rgb
from lightning_transfer.interpret import image_batch
from lightning_transfer.model import TransferClassifier
from lightning_transfer.utils.errors import UserError

BACKBONES = {  # pool, interpolation, mean
    "vgg16": ("flatten", "bilinear", [0.485, 0.456, 0.406]),
    "efficientnet_lite0": ("avg", "bicubic", [0.5] * 3),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A random-weights classifier of each built-in backbone with three classes, exported to ONNX."""
    torch.manual_seed(0)
    pool = BACKBONES[request.param][0]
    model = TransferClassifier(
        backbone=request.param, weights="none", class_names=["cat", "dog", "fox"], num_classes=3,
        image_size=TINY_SIZE, pool=pool,
    ).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export.export_onnx(model, path)
    return model, path


@pytest.mark.slow
def test_metadata_describes_the_preprocessing(exported: tuple) -> None:
    model, path = exported
    props = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    _, interpolation, mean = BACKBONES[model.hparams.backbone]
    assert json.loads(props["class_names"]) == ["cat", "dog", "fox"]
    assert int(props["image_size"]) == TINY_SIZE
    assert json.loads(props["mean"]) == pytest.approx(mean) and len(json.loads(props["std"])) == 3
    assert props["interpolation"] == interpolation


@pytest.mark.slow
def test_parity_passes_at_any_batch_size(exported: tuple) -> None:
    model, path = exported
    images, what = export.parity_images(None)
    assert export.check_parity(model, path, images, what) <= export.PARITY_LIMIT
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in (1, 3):
        batch = image_batch(model.backbone, images[:size], TINY_SIZE).numpy()
        (probabilities,) = session.run(["probabilities"], {"images": batch})
        assert probabilities.shape == (size, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_a_tampered_file_fails_the_parity_check(exported: tuple, tmp_path: Path) -> None:
    """One weight initializer changed (the last layer's bias) is caught."""
    model, path = exported
    proto = onnx.load(str(path))
    (bias,) = [tensor for tensor in proto.graph.initializer if tensor.name.endswith("head.classifier.3.bias")]
    values = onnx.numpy_helper.to_array(bias) + np.array([2.0, 0.0, -2.0], dtype=np.float32)
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))
    images, what = export.parity_images(None)
    with pytest.raises(UserError, match="differ from PyTorch's by .* more than 0.0001; the export is not kept"):
        export.check_parity(model, tampered, images, what)


def docs_snippet() -> str:
    """The ONNX-Runtime-only example of docs/serving.md, as users copy it."""
    text = (REPO / "docs" / "serving.md").read_text()
    section = text.split("## Predicting with ONNX Runtime alone", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


@pytest.mark.slow
def test_the_documented_example_predicts_without_torch(exported: tuple, tmp_path: Path) -> None:
    """The docs' snippet, with torch made unimportable, gives PyTorch's probabilities. The photos are
    already S x S, so PIL's resize and torchvision's both leave them as they are."""
    model, path = exported
    photos = []
    for index in range(3):
        photos.append(tmp_path / f"photo{index}.jpg")
        synthetic_photo(index % 2, index).save(photos[-1])
    blocked = "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
    result = subprocess.run(
        [sys.executable, "-c", blocked + docs_snippet(), str(path), *map(str, photos)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    served = np.array([[float(value) for value in row[2:]] for row in rows])
    with torch.inference_mode():
        expected = export.Probabilities(model)(image_batch(model.backbone, [load_rgb(p) for p in photos], TINY_SIZE))
    assert [row[0] for row in rows] == list(map(str, photos))
    assert [row[1] for row in rows] == [model.class_names[i] for i in expected.argmax(dim=1)]
    assert np.abs(served - expected.numpy()).max() < 1e-5


@pytest.mark.slow
def test_the_command_exports_and_checks(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    args = ["export", "--ckpt_path", str(tiny_checkpoint), "--out", str(out), "--images", str(tiny_data / "test")]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.search(r"on 8 images from .*: largest probability difference (\S+) \(limit 0.0001\): ok", result.stdout)
    assert found and float(found[1]) <= 1e-4, result.stdout
    assert out.is_file() and f"wrote {out}" in result.stdout


def test_an_existing_file_is_never_replaced_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"someone's model")
    with pytest.raises(UserError, match="model.onnx already exists; pass --overwrite or another --out file"):
        export.main(["--ckpt_path", str(tmp_path / "model.ckpt"), "--out", str(out)])
    assert out.read_bytes() == b"someone's model"


def test_missing_onnx_runtime_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=re.escape("pip install 'lightning-transfer[export]'")):
        export.main(["--ckpt_path", str(tmp_path / "model.ckpt")])


def test_a_file_that_fails_the_check_is_not_kept(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export is written under a temporary name and only renamed once it passed."""
    monkeypatch.setattr(export, "export_onnx", lambda model, path: path.write_bytes(b"graph"))
    monkeypatch.setattr(export, "largest_difference", lambda model, path, images: 0.5)
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(UserError, match="differ from PyTorch's by 5.00e-01"):
        export.main(["--ckpt_path", str(tiny_checkpoint), "--out", str(out)])
    assert list(out.parent.iterdir()) == []
