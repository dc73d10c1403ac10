"""Augmented training batches alone: the workers pipeline (baseline) vs the device pipeline.

Times two epochs of the train loader with no model, so the table shows what decoding and
augmenting cost: loader workers decode and augment every image every epoch (``data.pipeline
workers``), the device pipeline decodes each image once (in epoch 1) and augments whole batches
with Kornia on the device (``data.pipeline device``; here the CPU, or ``--device cuda``). Compare with
the model's own time per image (benchmarks/training_throughput.py) to see whether it matters.

    python benchmarks/augmentation_loader.py --images-per-class 100 --image-size 224
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cats_vs_dogs_small"


def epoch_speeds(args: argparse.Namespace, pipeline: str) -> list[float]:
    from lightning_transfer.data import ImageFolderDataModule
    from lightning_transfer.data.pipeline import Placement

    data = ImageFolderDataModule(
        str(args.root), args.image_size, augment=True, batch_size=args.batch_size, num_workers=args.num_workers,
        backbone=args.backbone, max_images_per_class=args.images_per_class, pipeline=pipeline,
    )
    data.setup("fit")
    images = data.datasets["train"]
    if pipeline == "device":  # what the data module builds on a trainer whose model is on args.device
        placement = Placement(device=torch.device(args.device))
        loader = data.input_pipeline.batches(images.paths, images.labels, "train", placement, data.preprocessing,
                                             args.image_size, args.batch_size, shuffle=True, augment=True,
                                             evaluation=False)
    else:
        loader = data.train_dataloader()  # persistent workers
    speeds = []
    for _ in range(2):
        start = time.perf_counter()
        count = sum(len(batch["label"]) for batch in loader)
        if args.device == "cuda":
            torch.cuda.synchronize()
        speeds.append(count / (time.perf_counter() - start))
    return speeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--backbone", default="efficientnet_lite0", help="whose preprocessing to use")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2, help="loader processes of the workers pipeline")
    parser.add_argument("--device", default="cpu", help="where the device pipeline holds and augments the images")
    args = parser.parse_args(argv)

    baseline = epoch_speeds(args, "workers")
    ours = epoch_speeds(args, "device")
    print(f"train loader, {2 * args.images_per_class} images, {args.image_size} px, augmented, batch "
          f"{args.batch_size}, {args.num_workers} workers vs the device pipeline on {args.device}, "
          f"{torch.get_num_threads()} threads")
    print("| epoch | workers pipeline img/s | device pipeline img/s | ratio |\n|---|---|---|---|")
    for epoch, (plain, device) in enumerate(zip(baseline, ours), start=1):
        print(f"| {epoch} | {plain:.1f} | {device:.1f} | **{device / plain:.2f}x** |")


if __name__ == "__main__":
    main()
