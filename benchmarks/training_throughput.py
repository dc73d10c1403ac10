"""Training throughput (images/s) of the fine-tuning step under Lightning precision settings.

Baseline: fp32 (``precision="32-true"``). Compared side by side in the same process: channels_last,
bf16 mixed precision (``precision="bf16-mixed"``) and ``torch.compile`` of the backbone. Synthetic
images, so only the model's speed is measured, not JPEG decoding. Run on GPU or CPU:

    python benchmarks/training_throughput.py --backbone vgg16 --image-size 150 --unfreeze block5
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch
from lightning import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

from lightning_transfer import TransferClassifier
from lightning_transfer.model import set_trainable


class SyntheticImages(Dataset):
    """Random normalized images with labels, shaped like the real loader's batches.

    Made on the training device up front, so the table measures the model rather than collating
    and copying host batches (on an H200, with host batches, both VGG16 and EfficientNet-Lite0
    steps took 10-27 ms whatever the precision, as if bound by the ~18 MB batch each carried).
    """

    def __init__(self, count: int, image_size: int, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, image_size, image_size, generator=generator).to(device)
        self.labels = torch.randint(0, 2, (count,), generator=generator).to(device)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index]}


class StepTimer(Callback):
    """Wall time of training steps after ``warmup`` steps (compilation and cuDNN autotune excluded)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.timed_steps = 0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.timed_steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync()
        self.elapsed = time.perf_counter() - self.start


def measure(args: argparse.Namespace, precision: str, channels_last: bool, compile_model: bool) -> float:
    torch.manual_seed(0)
    model = TransferClassifier(backbone=args.backbone, weights="none", image_size=args.image_size,
                               freeze_backbone=True, lr=1e-5, channels_last=channels_last)
    for block in args.unfreeze:
        set_trainable(model.backbone.block(block), True)
    if compile_model:
        model.backbone.compile()  # in place; compiling the whole module recompiles on every metric update
    steps = args.warmup + args.steps
    on_gpu = args.accelerator in ("gpu", "cuda") or (args.accelerator == "auto" and torch.cuda.is_available())
    images = SyntheticImages(steps * args.batch_size, args.image_size, torch.device("cuda" if on_gpu else "cpu"))
    loader = DataLoader(images, batch_size=args.batch_size)
    timer = StepTimer(args.warmup)
    trainer = Trainer(
        accelerator=args.accelerator, devices=1, precision=precision, max_steps=steps, callbacks=[timer],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(model, loader)
    return timer.timed_steps * args.batch_size / timer.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, autotune)")
    parser.add_argument("--unfreeze", nargs="*", default=["block5"], help="blocks trained with the head")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to build)")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    configurations = [
        ("fp32 (baseline)", "32-true", False, False),
        ("fp32 + channels_last", "32-true", True, False),
        ("bf16-mixed", "bf16-mixed", False, False),
        ("bf16-mixed + channels_last", "bf16-mixed", True, False),
    ]
    if args.compile:
        configurations.append(("bf16-mixed + channels_last + compiled backbone", "bf16-mixed", True, True))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()} threads"
    print(f"{args.backbone} {args.image_size}px, batch {args.batch_size}, trainable: head + {args.unfreeze}, {device}")
    print(f"{'configuration':<48} {'img/s':>9} {'ratio':>7}")
    baseline = None
    for name, precision, channels_last, compile_model in configurations:
        speed = measure(args, precision, channels_last, compile_model)
        baseline = baseline or speed
        print(f"{name:<48} {speed:>9.1f} {speed / baseline:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
