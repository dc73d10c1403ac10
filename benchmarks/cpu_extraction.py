"""Feature extraction on a CPU: the project's two input pipelines against a plain-PyTorch ceiling.

The ceiling is built here: N training images decoded and resized beforehand (not timed) into one
uint8 tensor, then the frozen conv base over it in plain PyTorch with every thread, bf16 autocast
where the CPU runs it natively and channels_last, normalizing each batch. The project's rows are
cold extractions from the JPEG files (read + decode + forward) by ``FeatureExtractor``: fed by
loader workers (``data.pipeline workers``) or from a split decoded once in this process
(``DecodedSplit``, what ``data.pipeline device`` and ``auto`` use for extraction). The three
alternate, ``--repeats`` times, so every ratio compares measurements taken side by side.

    python benchmarks/cpu_extraction.py --images 512 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "cats_vs_dogs_small"
METHODS = ("ceiling: plain PyTorch on decoded uint8", "workers pipeline", "device pipeline (decoded once)")


def training_images(root: Path, backbone: str, image_size: int, count: int):
    """``count`` training images spread over the classes, as the workers pipeline reads them."""
    from lightning_transfer.data import ImageFiles, ImageFolderDataModule

    data = ImageFolderDataModule(str(root), image_size=image_size, backbone=backbone)
    samples = data.split_samples("train")
    paths, labels = zip(*samples[:: max(1, len(samples) // count)][:count])
    return ImageFiles(paths, labels, data.transform(train=False)), data.preprocessing


def ceiling(backbone: torch.nn.Module, pixels: torch.Tensor, preprocessing, batch_size: int) -> float:
    """img/s of the textbook fast loop over images already decoded into ``pixels``."""
    from lightning_transfer.features import bf16_supported

    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    bf16 = bf16_supported(torch.device("cpu"))
    backbone.eval().to(memory_format=torch.channels_last)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in pixels.split(batch_size):
            images = ((batch.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
            backbone(images)
    return len(pixels) / (time.perf_counter() - start)


def project(backbone: torch.nn.Module, images, preprocessing, image_size: int, args, decoded: bool) -> float:
    """img/s of a cold extraction of ``images`` by the project, from the files."""
    from lightning_transfer.data.decoded_split import DecodedSplit
    from lightning_transfer.features import FeatureExtractor

    start = time.perf_counter()
    if decoded:
        images = DecodedSplit(images.paths, images.labels, preprocessing, image_size, torch.device("cpu"))
    FeatureExtractor(backbone, "auto", args.batch_size, 0 if decoded else args.num_workers)(images)
    return len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    from lightning_transfer.backbones import available_backbones, create_backbone, get_spec
    from lightning_transfer.data.datamodule import default_num_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=["vgg16", "efficientnet_lite0"],
                        choices=available_backbones())
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help="image folder with train/ (default: shared data)")
    parser.add_argument("--images", type=int, default=512, help="training images per measurement (default 512)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=default_num_workers(),
                        help="loader processes of the workers pipeline (default: its default)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three, alternating (default 2)")
    args = parser.parse_args(argv)
    from lightning_transfer.data.decoded_split import DecodedSplit

    rows = []
    for name in args.backbone:
        size = get_spec(name).default_image_size
        images, preprocessing = training_images(args.root, name, size, args.images)
        pixels = DecodedSplit(images.paths, images.labels, preprocessing, size, torch.device("cpu")).pixels
        backbone = create_backbone(name, "none")  # throughput does not depend on weight values
        ceiling(backbone, pixels[: args.batch_size], preprocessing, args.batch_size)  # warm-up, untimed
        speeds: dict[str, list[float]] = {method: [] for method in METHODS}
        for _ in range(args.repeats):
            speeds[METHODS[0]].append(ceiling(backbone, pixels, preprocessing, args.batch_size))
            speeds[METHODS[1]].append(project(backbone, images, preprocessing, size, args, decoded=False))
            speeds[METHODS[2]].append(project(backbone, images, preprocessing, size, args, decoded=True))
        rows.append((name, size, speeds))

    print(f"\n{args.images} training JPEGs, batch {args.batch_size}, {torch.get_num_threads()} threads, workers "
          f"pipeline with {args.num_workers} loader workers, {args.repeats} alternating rounds, "
          f"torch {torch.__version__}")
    print("| backbone | px | method | img/s per round | of the ceiling per round | median |")
    print("|---|---|---|---|---|---|")
    for name, size, speeds in rows:
        for method, values in speeds.items():
            ratios = [value / top for value, top in zip(values, speeds[METHODS[0]])]
            print(f"| {name} | {size} | {method} | {' / '.join(f'{v:.1f}' for v in values)} | "
                  f"{' / '.join(f'{r:.0%}' for r in ratios)} | **{statistics.median(ratios):.0%}** |")


if __name__ == "__main__":
    main()
