"""Benchmark 1: feature extraction throughput, plain fp32 loop vs the project's FeatureExtractor.

All read the same JPEGs through the same loader (decode, resize, normalize), so the table shows
what a user gets end to end. A middle column holds the extractor to fp32, to show what bf16 adds
on top of inference_mode, the memory layout and the thread budget. Each measurement runs in its
own fresh process (one after the other, in this one run) so its peak memory is its own; one batch is
run first, untimed, to warm up.

    python benchmarks/extraction_throughput.py --backbone efficientnet_lite0 --images 256
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import resource
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "cats_vs_dogs_small"
METHODS = ("plain fp32", "FeatureExtractor fp32", "FeatureExtractor")
"""The baseline, the extractor held to fp32 (shows what bf16 adds), the extractor as configured."""


def load_images(root: Path, backbone: str, image_size: int, count: int) -> Subset:
    from lightning_transfer.data import ImageFiles, ImageFolderDataModule

    data = ImageFolderDataModule(str(root), image_size=image_size, backbone=backbone)
    samples = data.split_samples("train")
    step = max(1, len(samples) // count)  # spread over both classes
    paths, labels = zip(*samples[::step][:count])
    return ImageFiles(paths, labels, data.transform(train=False))


def plain_fp32(model: torch.nn.Module, images, batch_size: int, num_workers: int, device: torch.device) -> None:
    """The textbook loop: eval mode, no_grad, default memory layout, fp32."""
    model.eval()
    with torch.no_grad():
        for batch in DataLoader(images, batch_size=batch_size, num_workers=num_workers):
            model(batch["image"].to(device)).cpu()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(method: str, args: argparse.Namespace) -> tuple[float, float, str]:
    """(images/s, peak memory MB, the extractor's settings) of one method, in this (fresh) process."""
    from lightning_transfer.backbones import create_backbone
    from lightning_transfer.features import FeatureExtractor

    device = torch.device(args.device)
    backbone = create_backbone(args.backbone, args.weights).to(device)
    images = load_images(args.root, args.backbone, args.image_size, args.images)
    warmup = Subset(images, range(min(args.batch_size, len(images))))
    dtype = "fp32" if method == "FeatureExtractor fp32" else args.dtype
    channels_last = {"auto": None, "channels_last": True, "contiguous": False}[args.layout]
    extractor = FeatureExtractor(backbone, dtype, args.batch_size, args.num_workers, channels_last)
    run = extractor if method.startswith("FeatureExtractor") else functools.partial(
        plain_fp32, backbone, batch_size=args.batch_size, num_workers=args.num_workers, device=device
    )
    run(warmup)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    setup = f"{extractor.dtype}, {extractor.layout_name}, threads={extractor.threads}"
    return len(images) / (time.perf_counter() - start), peak_memory_mb(device), setup


def _measure_in_child(method: str, args: argparse.Namespace, queue: multiprocessing.Queue) -> None:
    # a spawned child defaults to spawning too; fork the loader workers as a normal run does
    multiprocessing.set_start_method("fork", force=True)
    queue.put(measure(method, args))


def measure_in_fresh_process(method: str, args: argparse.Namespace) -> tuple[float, float, str]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure_in_child, args=(method, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> None:
    from lightning_transfer.backbones import available_backbones, get_spec
    from lightning_transfer.data.datamodule import default_num_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=["efficientnet_lite0", "vgg16"],
                        choices=available_backbones(), help="backbones to measure (default: both)")
    parser.add_argument("--weights", default="none",
                        help="imagenet, none (default: throughput does not depend on weight values) or a file")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="image folder with train/ (default: shared data)")
    parser.add_argument("--images", type=int, default=256, help="images per measurement (default 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=default_num_workers(), help="loader processes")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="FeatureExtractor dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layout", default="auto", choices=["auto", "channels_last", "contiguous"],
                        help="FeatureExtractor memory layout (auto: channels_last on CPU, contiguous on GPU)")
    args = parser.parse_args(argv)

    rows = []
    for backbone in args.backbone:
        run_args = argparse.Namespace(**{**vars(args), "backbone": backbone,
                                         "image_size": get_spec(backbone).default_image_size})
        results = {method: measure_in_fresh_process(method, run_args) for method in METHODS}
        rows.append((backbone, run_args.image_size, results))

    print(f"\n{args.images} images, batch {args.batch_size}, {args.num_workers} loader workers, "
          f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| backbone | px | plain fp32 img/s | FeatureExtractor fp32 img/s | FeatureExtractor img/s | ratio | "
          "plain peak MB | ours peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for backbone, size, results in rows:
        (plain, plain_mb, _), (ours, ours_mb, setup) = results["plain fp32"], results["FeatureExtractor"]
        ours_fp32 = results["FeatureExtractor fp32"][0]
        print(f"| {backbone} | {size} | {plain:.1f} | {ours_fp32:.1f} | {ours:.1f} ({setup}) | "
              f"**{ours / plain:.2f}x** | {plain_mb:.0f} | {ours_mb:.0f} |")


if __name__ == "__main__":
    main()
