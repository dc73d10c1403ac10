"""Augmented training loader: decode every JPEG every epoch (baseline) vs ``data.keep_decoded``.

Times two epochs of the train loader alone (no model), so the table shows what decoding costs
and what keeping decoded uint8 images saves from the second epoch on. Compare with the model's
own time per image (benchmarks/training_throughput.py) to see whether decoding matters on a device.

    python benchmarks/augmentation_loader.py --images-per-class 100 --image-size 224
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lightning_transfer.data import ImageFolderDataModule

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cats_vs_dogs_small"


def epoch_speeds(args: argparse.Namespace, keep_decoded: bool) -> list[float]:
    data = ImageFolderDataModule(
        str(args.root), args.image_size, augment=True, batch_size=32, num_workers=args.num_workers,
        backbone=args.backbone, max_images_per_class=args.images_per_class, keep_decoded=keep_decoded,
    )
    data.setup("fit")
    loader = data.train_dataloader()  # persistent workers keep their decoded images across epochs
    speeds = []
    for _ in range(2):
        start = time.perf_counter()
        count = sum(len(batch["label"]) for batch in loader)
        speeds.append(count / (time.perf_counter() - start))
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--backbone", default="efficientnet_lite0", help="whose preprocessing to use")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()

    baseline = epoch_speeds(args, keep_decoded=False)
    ours = epoch_speeds(args, keep_decoded=True)
    print(f"train loader, {2 * args.images_per_class} images, {args.image_size}px, augment, "
          f"{args.num_workers} workers")
    print(f"{'epoch':<7} {'decode every epoch img/s':>25} {'keep_decoded img/s':>20} {'ratio':>7}")
    for epoch, (plain, kept) in enumerate(zip(baseline, ours), start=1):
        print(f"{epoch:<7} {plain:>25.1f} {kept:>20.1f} {kept / plain:>6.2f}x")


if __name__ == "__main__":
    main()
