"""GPU check: plain-PyTorch ceilings and the project's own rows from JPEG files, in one run, one table.

Ceilings (images already on the device, bf16 autocast + channels_last, batch ``--batch-size``):
VGG16 150 px forward and training step (block5 + flatten head trainable), EfficientNet-Lite0
224 px forward, torchvision's batched nvjpeg decode + resize to 150 px, and the CPU DataLoader
(PIL decode + resize in ``--workers`` processes). The project's rows read the JPEG files of
DATA_ROOT: cold extraction (read + decode + forward, ``data.pipeline device``) against the forward
ceilings; experiment 2 (frozen VGG16 + augmentation) and VGG16 fine-tuning (block5 + head) training
img/s over steady epochs (epoch 0 left out) against the forward and training-step ceilings; and
the wall time of the book's experiment-2 recipe as one ``lightning-transfer fit`` command (VGG16 150
px, 100 augmented epochs over ``--book-images`` training images, random weights). Random weights
throughout: speed does not depend on weight values. Run it through benchmarks/gpu_check.sh.

    python benchmarks/gpu_check.py .gpu_data                      # on a CUDA GPU
    python benchmarks/gpu_check.py tests_data --device cpu --quick  # a dry run of every row on a CPU
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer

REPO = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], object]) -> float:
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def autocast(device: torch.device) -> torch.autocast:
    from lightning_transfer.features import bf16_supported

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_supported(device))


def ceiling_forward(args, backbone_name: str, size: int) -> float:
    """img/s of the frozen conv base on random uint8 images already on the device, normalized per batch."""
    from lightning_transfer.backbones import create_backbone, get_spec

    device, batch = args.device, args.batch_size
    backbone = create_backbone(backbone_name, "none").to(device).eval().to(memory_format=torch.channels_last)
    spec = get_spec(backbone_name).preprocessing
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (spec.mean, spec.std))
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)

    def steps(count: int) -> None:
        with torch.inference_mode(), autocast(device):
            for _ in range(count):
                backbone(((pixels.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last))

    timed(device, lambda: steps(args.warmup))
    return args.steps * batch / timed(device, lambda: steps(args.steps))


def ceiling_train_step(args, size: int) -> float:
    """img/s of VGG16's training step with block5 and the book's flatten head trainable."""
    from lightning_transfer import TransferClassifier
    from lightning_transfer.model import set_trainable

    device, batch = args.device, args.batch_size
    model = TransferClassifier("vgg16", "none", image_size=size).to(device)
    set_trainable(model.backbone.block("block5"), True)
    optimizer = torch.optim.RMSprop([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch,), device=device)

    def steps(count: int) -> None:
        for _ in range(count):
            with autocast(device):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    timed(device, lambda: steps(args.warmup))
    return args.steps * batch / timed(device, lambda: steps(args.steps))


def ceiling_decode(args, paths: list[Path], size: int) -> float:
    """img/s of torchvision's batched ``decode_jpeg`` on the device + resize, files already read."""
    import warnings

    from torchvision import io
    from torchvision.transforms import v2

    data = [torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8) for path in paths]
    resize = v2.Resize((size, size), antialias=True)

    def decode() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for start in range(0, len(data), 256):
                chunk = data[start : start + 256]
                for image in io.decode_jpeg(chunk, mode=io.ImageReadMode.RGB, device=args.device):
                    resize(image)

    timed(args.device, decode)  # warm-up: nvjpeg's handles and buffers
    return len(data) / timed(args.device, decode)


def ceiling_cpu_loader(args, root: Path) -> float:
    """img/s of the workers pipeline's loader alone: PIL decode + resize in ``--workers`` processes."""
    from torch.utils.data import DataLoader

    from lightning_transfer.data import ImageFolderDataModule

    data = ImageFolderDataModule(str(root), image_size=args.image_size, num_workers=args.workers, pipeline="workers")
    data.setup("fit")
    loader = DataLoader(data.datasets["train"], batch_size=args.batch_size, num_workers=args.workers)
    return len(data.datasets["train"]) / timed(args.device, lambda: sum(1 for _ in loader))


def project_extraction(args, root: Path, backbone_name: str, size: int) -> tuple[float, str]:
    """img/s of a cold extraction from the files: decoded once on the device, then the extractor."""
    from lightning_transfer.backbones import create_backbone
    from lightning_transfer.data import ImageFolderDataModule
    from lightning_transfer.data.decoded_split import DecodedSplit
    from lightning_transfer.features import FeatureExtractor

    data = ImageFolderDataModule(str(root), image_size=size, backbone=backbone_name)
    paths, labels = zip(*data.split_samples("train"))
    extractor = FeatureExtractor(create_backbone(backbone_name, "none").to(args.device), "auto", args.batch_size, 0)
    split = DecodedSplit(paths, labels, data.preprocessing, size, args.device)
    seconds = timed(args.device, lambda: extractor(split))
    return len(paths) / seconds, extractor.describe()


class EpochTimer(Callback):
    """Wall time of each training epoch (run with validation off)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: list[float] = []
        self.start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sync(self.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sync(self.device)
        self.seconds.append(time.perf_counter() - self.start)


def project_training(args, root: Path, fine_tuning: bool) -> float:
    """Training img/s over the steady epochs of an in-process fit on the device pipeline."""
    import logging

    from lightning_transfer import ImageFolderDataModule, TransferClassifier
    from lightning_transfer.callbacks import StagedFinetuning
    from lightning_transfer.callbacks.finetuning import Stage

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = ImageFolderDataModule(str(root), image_size=args.image_size, augment=True, batch_size=args.batch_size,
                                 pipeline="device")
    model = TransferClassifier("vgg16", "none", num_classes=len(data.class_names), class_names=data.class_names,
                               image_size=args.image_size)
    timer = EpochTimer(args.device)
    callbacks = [timer] + ([StagedFinetuning([Stage(0, ["block5"], 0.5)])] if fine_tuning else [])
    trainer = Trainer(accelerator=args.device.type, devices=1, precision=args.precision, max_epochs=args.epochs,
                      limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(model, data)
    steady = timer.seconds[1:] or timer.seconds
    return len(trainer.train_dataloader.dataset) / (sum(steady) / len(steady))


def book_root(shipped: Path, images: int, scratch: Path) -> Path:
    """``shipped`` with its training images repeated (hard links) up to ``images``: the book's 2000.
    Taken class by class in turn, so fewer images than shipped still hold every class."""
    classes = [sorted(folder.iterdir()) for folder in sorted((shipped / "train").iterdir()) if folder.is_dir()]
    train = [path for group in itertools.zip_longest(*classes) for path in group if path is not None]
    for index in range(max(images, 1)):
        source = train[index % len(train)]
        target = scratch / "train" / source.parent.name / f"{index // len(train)}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another file system
            target.write_bytes(source.read_bytes())
    (scratch / "val").symlink_to((shipped / "val").resolve())
    return scratch


def book_recipe(args, root: Path, batch_size: int, scratch: Path) -> tuple[float, str]:
    """Wall time of the whole ``lightning-transfer fit`` command of experiment 2, and how it ended."""
    config = REPO / "configs" / "vgg16_feature_extraction_augmented.yaml"
    command = [
        sys.executable, "-m", "lightning_transfer", "fit", "--config", str(config),
        "--data.root", str(root), "--model.weights", "none", "--trainer.max_epochs", str(args.book_epochs),
        "--trainer.accelerator", args.device.type, "--trainer.devices", "1", "--trainer.precision", args.precision,
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(scratch),
        "--data.batch_size", str(batch_size), "--data.image_size", str(args.image_size),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.book_timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, f"stopped after {args.book_timeout} s"
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return seconds, "FAILED: " + result.stderr.strip().splitlines()[-1][:200]
    return seconds, "ok"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_root", type=Path, help="folder with train/ and val/ class folders of JPEGs")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run with --quick")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every row runs")
    parser.add_argument("--batch-size", type=int, default=128, help="for ceilings and project alike (default 128)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="CPU DataLoader workers of the loader ceiling")
    parser.add_argument("--book-images", type=int, default=2000, help="training images of the book's recipe")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    args.image_size, args.effnet_size, args.steps, args.warmup, args.epochs, args.book_epochs = 150, 224, 30, 5, 4, 100
    args.precision, args.book_timeout = ("bf16-mixed" if args.device.type == "cuda" else "32-true"), 240
    if args.quick:
        args.image_size = args.effnet_size = 32
        args.steps, args.warmup, args.epochs, args.book_epochs, args.batch_size = 2, 1, 2, 1, 4
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    rows: list[tuple[str, float, str, str]] = []  # what, value, unit, note

    def row(what: str, value: float, unit: str = "img/s", note: str = "") -> float:
        rows.append((what, value, unit, note))
        print(f"{what}: {value:,.1f} {unit} {note}", flush=True)
        return value

    train_paths = sorted(args.data_root.glob("train/*/*"))
    vgg, effnet = f"VGG16 {args.image_size} px", f"EfficientNet-Lite0 {args.effnet_size} px"
    vgg_forward = row(f"ceiling: {vgg} forward", ceiling_forward(args, "vgg16", args.image_size))
    vgg_step = row(f"ceiling: {vgg} training step (block5 + head)", ceiling_train_step(args, args.image_size))
    effnet_forward = row(f"ceiling: {effnet} forward", ceiling_forward(args, "efficientnet_lite0", args.effnet_size))
    if args.device.type == "cuda":
        row(f"ceiling: nvjpeg decode_jpeg(list) + resize to {args.image_size}",
            ceiling_decode(args, train_paths, args.image_size))
    row(f"ceiling: CPU DataLoader, {args.workers} workers, PIL decode + resize",
        ceiling_cpu_loader(args, args.data_root))
    extractions = (("vgg16", args.image_size, vgg_forward), ("efficientnet_lite0", args.effnet_size, effnet_forward))
    for name, size, top in extractions:
        speed, setup = project_extraction(args, args.data_root, name, size)
        row(f"project: {name} {size} px extraction from JPEGs, cold", speed,
            note=f"{speed / top:.0%} of forward ({setup})")
    with tempfile.TemporaryDirectory() as scratch:
        book = book_root(args.data_root, args.book_images, Path(scratch) / "book")
        speed = project_training(args, book, fine_tuning=False)
        row(f"project: experiment 2 training ({vgg} frozen + augmentation), steady epochs", speed,
            note=f"{speed / vgg_forward:.0%} of forward")
        speed = project_training(args, book, fine_tuning=True)
        row(f"project: {vgg} fine-tuning training (block5 + head), steady epochs", speed,
            note=f"{speed / vgg_step:.0%} of training step")
        for batch in dict.fromkeys((args.batch_size,) if args.quick else (20, args.batch_size)):  # the book's, ours
            seconds, status = book_recipe(args, book, batch, Path(scratch) / f"run{batch}")
            row(f"project: book recipe as one command ({args.book_images} images x {args.book_epochs} epochs, "
                f"batch {batch})", seconds, "s", status)

    print(f"\n{torch.cuda.get_device_name(args.device) if args.device.type == 'cuda' else 'CPU'}, torch "
          f"{torch.__version__}, batch {args.batch_size}, {len(train_paths)} training JPEGs shipped\n")
    print("| row | value | note |\n|---|---|---|")
    for what, value, unit, note in rows:
        print(f"| {what} | {value:,.1f} {unit} | {note} |")


if __name__ == "__main__":
    main()
