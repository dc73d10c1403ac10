"""Benchmark 2: fast feature extraction, cold (extract + cache) vs warm (cache hit) full ``fit``.

Runs ``lightning-transfer fit --config CONFIG`` twice in this process with a fresh, empty feature
cache: the first run extracts and caches the features, the second finds them. Both train the same
head with the same seed, so their val_acc must agree; only the wall time differs. The table shows
the whole ``fit`` and, inside it, the time spent getting the features (extract vs load). A last row
trains the warm run's head once more as a bare PyTorch loop (same pooled features, head, optimizer,
batch size and epochs; no Lightning, validation, logging or checkpoints): a floor no warm ``fit`` of
this config can beat, and so the largest cold/warm ratio it could reach.

    python benchmarks/feature_cache.py --max-images-per-class 100
    python benchmarks/feature_cache.py -- --trainer.max_epochs 10     # extra fit options after --
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "efficientnet_lite0_feature_extraction.yaml"
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "cats_vs_dogs_small"


def best_val_acc(run_dir: Path) -> float:
    """The best-val_acc ModelCheckpoint's score, read back from the run's last.ckpt (the last-epoch
    checkpoint callback has no monitor, so its score is None)."""
    from lightning_transfer import read_checkpoint

    (last,) = run_dir.glob("checkpoints/last*.ckpt")
    scores = [state.get("best_model_score") for state in read_checkpoint(last)["callbacks"].values()]
    return next(float(score) for score in scores if score is not None)


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


def timed_fit(fit_args: list[str], work_dir: Path, feature_seconds: list[float]) -> tuple[float, float, float, Path]:
    """(fit seconds, feature seconds, best val_acc, run folder) of one ``fit``, logging under ``work_dir``."""
    from lightning_transfer.commands.cli import main as cli_main

    before = set(work_dir.glob("lightning_logs/version_*"))
    features_before = len(feature_seconds)
    start = time.perf_counter()
    cli_main(["fit", *fit_args, "--trainer.default_root_dir", str(work_dir)])
    seconds = time.perf_counter() - start
    (run_dir,) = set(work_dir.glob("lightning_logs/version_*")) - before
    return seconds, sum(feature_seconds[features_before:]), best_val_acc(run_dir), run_dir


def bare_head_training_seconds(run_dir: Path, cache_dir: Path) -> float:
    """Train the run's head again in a bare PyTorch loop over its cached train features; wall seconds."""
    import torch
    import yaml
    from safetensors import safe_open

    from lightning_transfer import load_model
    from lightning_transfer.model import optimizer_class
    from lightning_transfer.utils.runtime import default_device

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (train_file,) = cache_dir.glob("features/*/train-*.safetensors")
    with safe_open(str(train_file), framework="pt") as file:
        features = file.get_tensor("features")
        labels = torch.tensor([entry[1] for entry in json.loads(file.metadata()["key"])["files"]])
    model = load_model(next(run_dir.glob("checkpoints/last*.ckpt"))).train()
    device = default_device()  # where the fits ran (accelerator auto)
    pooled, labels, dense = model.pool(features).to(device), labels.to(device), model.head.classifier.to(device)
    optimizer = optimizer_class(model.hparams.optimizer)(
        dense.parameters(), lr=model.hparams.lr, weight_decay=model.hparams.weight_decay
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the data module trains the head on cached features
    try:
        start = time.perf_counter()
        for _ in range(config["trainer"]["max_epochs"]):
            for rows in torch.randperm(len(pooled), device=device).split(config["data"]["batch_size"]):
                loss = model.loss(dense(pooled[rows]), labels[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


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
        cold_s, cold_features_s, cold_acc, _ = timed_fit(fit_args, Path(scratch), feature_seconds)
        warm_s, warm_features_s, warm_acc, warm_run = timed_fit(fit_args, Path(scratch), feature_seconds)
        bare_s = bare_head_training_seconds(warm_run, Path(scratch) / "cache")

    print(f"\nlightning-transfer fit --config {args.config} --data.root {args.root} (fresh cache dir)",
          *fit_args[8:])
    print("| run | fit wall time (s) | of which features (s) | best val_acc |")
    print("|---|---|---|---|")
    print(f"| cold (extract + cache) | {cold_s:.1f} | {cold_features_s:.2f} | {cold_acc:.4f} |")
    print(f"| warm (cache hit) | {warm_s:.1f} | {warm_features_s:.2f} | {warm_acc:.4f} |")
    print(f"| **ratio cold / warm** | **{cold_s / warm_s:.1f}x** | **{cold_features_s / warm_features_s:.0f}x** | |")
    print(f"| floor: warm features + the head's training steps as a bare PyTorch loop | {warm_features_s + bare_s:.1f} | "
          f"{warm_features_s:.2f} | |")
    print(f"| **ratio cold / floor** (the most a warm fit could gain) | **{cold_s / (warm_features_s + bare_s):.1f}x** | | |")


if __name__ == "__main__":
    main()
