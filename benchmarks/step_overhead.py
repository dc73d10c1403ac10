"""What Lightning adds to each training step of a tiny head on device-resident features.

Baseline: a bare PyTorch loop doing the same step (the head's forward, cross-entropy, backward,
RMSprop) over the same ``DeviceBatches``. Then ``Trainer.fit`` of ``TransferClassifier`` on them,
first as ``lightning-transfer fit`` runs it (progress bar, CSV logger, last-epoch checkpoint) and
then with those parts switched off one at a time, so the table shows what each costs per step.
Per-step times are the difference between a long and a short run of each, which cancels set-up
and the one end-of-epoch checkpoint. Each variant runs ``--repeats`` times, interleaved.

    python benchmarks/step_overhead.py --backbone efficientnet_lite0 --batch-size 32
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

VARIANTS = {
    "as the CLI runs it, with the self.log calls at every step cut before": {
        "enable_progress_bar": True, "logger": True, "checkpoint": True, "log_every_step": True},
    "as the CLI runs it": {"enable_progress_bar": True, "logger": True, "checkpoint": True},
    "no progress bar": {"enable_progress_bar": False, "logger": True, "checkpoint": True},
    "no progress bar, no logger": {"enable_progress_bar": False, "logger": False, "checkpoint": True},
    "no progress bar, logger or checkpoint": {"enable_progress_bar": False, "logger": False, "checkpoint": False},
}


def make_model(args: argparse.Namespace, device: torch.device, log_every_step: bool = False):
    from lightning_transfer import TransferClassifier

    class LoggingEveryStep(TransferClassifier):
        """Also makes the two ``self.log`` calls per training step that the model made before."""

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            size = len(batch["label"])
            self.log("step_loss", loss, on_epoch=True, on_step=False, batch_size=size, sync_dist=True)
            self.log("step_acc", self.train_acc, on_epoch=True, on_step=False, batch_size=size)
            return loss

    torch.manual_seed(0)
    model_class = LoggingEveryStep if log_every_step else TransferClassifier
    return model_class(backbone=args.backbone, weights="none", class_names=["cat", "dog"],
                       image_size=args.image_size, pool=args.pool).to(device)


def batches_for(model, rows: int, batch_size: int, device: torch.device):
    """Shuffled ``DeviceBatches`` of random pooled features shaped like the model's, with labels, on ``device``."""
    from lightning_transfer.data.device_batches import DeviceBatches
    from lightning_transfer.features import FeatureDataset

    in_features = model.head.classifier[0].in_features
    generator = torch.Generator().manual_seed(0)
    pooled = torch.randn(rows, in_features, generator=generator).to(device)
    labels = torch.randint(0, 2, (rows,), generator=generator).tolist()
    features = FeatureDataset(pooled, [f"{index}.jpg" for index in range(rows)], labels)
    return DeviceBatches(features, batch_size, shuffle=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(args: argparse.Namespace, device: torch.device, steps: int) -> float:
    """Seconds for ``steps`` steps of the plain loop (after one untimed step)."""
    model = make_model(args, device).train()
    batches = batches_for(model, steps * args.batch_size, args.batch_size, device)
    optimizer = torch.optim.RMSprop([p for p in model.parameters() if p.requires_grad], lr=model.hparams.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        loss = loss_fn(model.head.classifier(batch["pooled_features"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


def lightning_fit(args: argparse.Namespace, device: torch.device, steps: int, variant: dict) -> float:
    """Seconds of ``Trainer.fit`` for one epoch of ``steps`` steps, without validation."""
    from lightning import Trainer

    from lightning_transfer.callbacks import last_epoch_checkpoint

    model = make_model(args, device, variant.get("log_every_step", False))
    batches = batches_for(model, steps * args.batch_size, args.batch_size, device)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(
            accelerator=device.type, devices=1, max_epochs=1, default_root_dir=scratch,
            enable_progress_bar=variant["enable_progress_bar"], enable_model_summary=False,
            logger=variant["logger"], enable_checkpointing=variant["checkpoint"],
            callbacks=[last_epoch_checkpoint(Path(scratch) / "checkpoints")] if variant["checkpoint"] else [],
            limit_val_batches=0, num_sanity_val_steps=0,
        )
        sync(device)
        start = time.perf_counter()
        trainer.fit(model, train_dataloaders=batches)
        sync(device)
        return time.perf_counter() - start


def per_step_ms(run, short: int, long: int) -> float:
    return (run(long) - run(short)) / (long - short) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0", help="whose head shape to train")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--pool", default="avg", choices=["avg", "flatten"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=400, help="steps of the long run (the short run has 1/4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: what fits on cached features run with on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    short, long = args.steps // 4, args.steps
    runs = {"bare PyTorch loop": lambda n: bare_loop(args, device, n)}
    for name, variant in VARIANTS.items():
        runs[f"Lightning, {name}"] = lambda n, variant=variant: lightning_fit(args, device, n, variant)
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            results[name].append(per_step_ms(run, short, long))

    # the fastest of the interleaved repeats: on a shared machine other jobs only ever add time
    bare = min(results["bare PyTorch loop"])
    print(f"\n{args.backbone} head ({args.pool} pool), batch {args.batch_size}, device {device}, "
          f"{args.threads} thread(s), {args.repeats} repeats, ms per step from {long} - {short} steps")
    print("| run | ms/step (best) | median, slowest | overhead vs bare (best) |")
    print("|---|---|---|---|")
    for name, times in results.items():
        best = min(times)
        print(f"| {name} | {best:.3f} | {statistics.median(times):.3f}, {max(times):.3f} | "
              f"{best - bare:+.3f} ms ({best / bare:.2f}x) |")


if __name__ == "__main__":
    main()
