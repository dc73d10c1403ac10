"""Benchmark 2: fast feature extraction, cold (extract + cache) vs warm (cache hit) full ``fit``.

Runs ``lightning-transfer fit --config CONFIG`` twice in this process with a fresh, empty feature
cache: the first run extracts and caches the features, the second finds them. Both train the same
head with the same seed, so their val_acc must agree; only the wall time differs. The table shows
the whole ``fit`` and, inside it, the time spent getting the features (extract vs load).

    python benchmarks/feature_cache.py --max-images-per-class 100
    python benchmarks/feature_cache.py -- --trainer.max_epochs 10     # extra fit options after --
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "efficientnet_lite0_feature_extraction.yaml"
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "cats_vs_dogs_small"


def best_val_acc(run_dir: Path) -> float:
    """The ModelCheckpoint's best score, read back from the run's last.ckpt."""
    from lightning_transfer.checkpoint import read_checkpoint

    (last,) = run_dir.glob("checkpoints/last*.ckpt")
    states = read_checkpoint(last)["callbacks"].values()
    return next(float(state["best_model_score"]) for state in states if "best_model_score" in state)


def timing_feature_cache(seconds: list[float]) -> None:
    """Make every ``FeatureCache.get`` (extract or load) append its wall time to ``seconds``."""
    from lightning_transfer.features import FeatureCache

    get = FeatureCache.get

    def timed_get(self, split, images):
        start = time.perf_counter()
        try:
            return get(self, split, images)
        finally:
            seconds.append(time.perf_counter() - start)

    FeatureCache.get = timed_get


def timed_fit(fit_args: list[str], work_dir: Path, feature_seconds: list[float]) -> tuple[float, float, float]:
    """(fit seconds, feature seconds, best val_acc) of one ``fit``, logging under ``work_dir``."""
    from lightning_transfer.cli import main as cli_main

    before = set(work_dir.glob("lightning_logs/version_*"))
    features_before = len(feature_seconds)
    start = time.perf_counter()
    cli_main(["fit", *fit_args, "--trainer.default_root_dir", str(work_dir)])
    seconds = time.perf_counter() - start
    (run_dir,) = set(work_dir.glob("lightning_logs/version_*")) - before
    return seconds, sum(feature_seconds[features_before:]), best_val_acc(run_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="fit config with data.cache_features true")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="data root (default: the shared cats-vs-dogs)")
    parser.add_argument("--max-images-per-class", type=int, help="first N images per class and split (default all)")
    parser.add_argument("fit_options", nargs="*", help="extra `lightning-transfer fit` options, after --")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="feature-cache-bench-") as scratch:
        fit_args = ["--config", str(args.config), "--data.root", str(args.root),
                    "--data.cache_features", "true", "--data.cache_dir", str(Path(scratch) / "cache")]
        if args.max_images_per_class:
            fit_args += ["--data.max_images_per_class", str(args.max_images_per_class)]
        fit_args += args.fit_options
        feature_seconds: list[float] = []
        timing_feature_cache(feature_seconds)
        cold_s, cold_features_s, cold_acc = timed_fit(fit_args, Path(scratch), feature_seconds)
        warm_s, warm_features_s, warm_acc = timed_fit(fit_args, Path(scratch), feature_seconds)

    print(f"\nlightning-transfer fit --config {args.config} --data.root {args.root} (fresh cache dir)",
          *fit_args[8:])
    print("| run | fit wall time (s) | of which features (s) | best val_acc |")
    print("|---|---|---|---|")
    print(f"| cold (extract + cache) | {cold_s:.1f} | {cold_features_s:.2f} | {cold_acc:.4f} |")
    print(f"| warm (cache hit) | {warm_s:.1f} | {warm_features_s:.2f} | {warm_acc:.4f} |")
    print(f"| **ratio cold / warm** | **{cold_s / warm_s:.1f}x** | **{cold_features_s / warm_features_s:.0f}x** | |")


if __name__ == "__main__":
    main()
