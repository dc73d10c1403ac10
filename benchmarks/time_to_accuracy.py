"""Time to accuracy of the three experiments with EfficientNet-Lite0 (offline ImageNet weights).

Runs each config's ``lightning-transfer fit`` as a user would, one after the other, and prints
wall time and best val_acc, with time relative to the fast path (the baseline). Feature caches go
to a fresh temporary folder, so the fast path is measured cold (extraction included).

    python benchmarks/time_to_accuracy.py --images-per-class 100 --epochs 3
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "cats_vs_dogs_small"
EXPERIMENTS = [
    ("1. fast feature extraction (cached)", "efficientnet_lite0_feature_extraction.yaml"),
    ("2. frozen base + augmentation", "efficientnet_lite0_feature_extraction_augmented.yaml"),
    ("3. staged fine-tuning", "efficientnet_lite0_fine_tuning.yaml"),
]


def best_val_acc(run_dir: Path) -> float:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return max(float(row["val_acc"]) for row in rows if row.get("val_acc"))


def run(config: str, args: argparse.Namespace, workdir: Path) -> tuple[float, float]:
    command = [
        sys.executable, "-m", "lightning_transfer", "fit", "--config", str(REPO / "configs" / config),
        "--data.root", str(args.root), "--trainer.max_epochs", str(args.epochs),
        "--trainer.enable_progress_bar", "false", "--data.cache_dir", str(workdir / "cache"),
    ]
    if args.images_per_class:
        command += ["--data.max_images_per_class", str(args.images_per_class)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    return elapsed, best_val_acc(max((workdir / "lightning_logs").iterdir(), key=lambda p: p.stat().st_mtime))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--images-per-class", type=int, default=100, help="0 = all images")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as temp:
        for name, config in EXPERIMENTS:
            workdir = Path(temp) / config.removesuffix(".yaml")
            workdir.mkdir()
            results.append((name, *run(config, args, workdir)))
    subset = f"{args.images_per_class} images per class and split" if args.images_per_class else "all images"
    print(f"EfficientNet-Lite0, {subset}, {args.epochs} epochs each, CPU threads {os.cpu_count()}")
    print(f"{'experiment':<38} {'wall s':>8} {'time ratio':>11} {'best val_acc':>13}")
    baseline = results[0][1]
    for name, seconds, accuracy in results:
        print(f"{name:<38} {seconds:>8.1f} {seconds / baseline:>10.2f}x {accuracy:>13.3f}")


if __name__ == "__main__":
    main()
