"""Shared fixtures: tiny generated image folders, tiny checkpoints, planted weights; the shared
cats-vs-dogs photos only for the real-accuracy tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "datasets" / "cats_vs_dogs_small"
TINY_SIZE = 64


def channels_last_kernels(module: torch.nn.Module) -> int:
    """How many conv kernels are laid out channels_last (and not also in the default layout)."""
    kernels = [parameter for parameter in module.parameters() if parameter.dim() == 4]
    return sum(k.is_contiguous(memory_format=torch.channels_last) and not k.is_contiguous() for k in kernels)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``lightning-transfer ARGS`` in a subprocess, as a user would (this checkout's code)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lightning_transfer", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full cats-vs-dogs split (1000/500/500 per class); read-only."""
    assert SHARED_DATA.is_dir(), f"shared dataset missing at {SHARED_DATA}"
    return SHARED_DATA


def synthetic_photo(label: int, seed: int, size: int = TINY_SIZE) -> Image.Image:
    """A learnable stand-in for a photo: stripes across (class 0) or down (class 1), at a random
    period, phase and color, with noise; JPEG-saved like the real data."""
    rng = np.random.default_rng(seed * 2 + label)
    period, phase = rng.uniform(6, 14), rng.uniform(0, 2 * np.pi)
    axis = np.arange(size)[:, None] if label == 0 else np.arange(size)[None, :]
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * axis / period + phase)
    color = rng.uniform(0.3, 1.0, size=3)
    pixels = stripes[..., None] * color + rng.normal(0, 0.08, size=(size, size, 3))
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def make_tiny_dataset(root: Path, per_class: dict[str, int], size: int = TINY_SIZE) -> Path:
    """``root/<split>/{cat,dog}/`` with N generated JPEGs per class and split (``synthetic_photo``)."""
    for split_index, (split, count) in enumerate(per_class.items()):
        for label, name in enumerate(("cat", "dog")):
            out = root / split / name
            out.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                seed = 1000 * split_index + index
                synthetic_photo(label, seed, size).save(out / f"{name}.{seed}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train 8, val 4, test 4 images per class, 64 px: a real folder layout that trains in seconds."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"), {"train": 8, "val": 4, "test": 4})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A VGG16 (random weights) classifier fit for 2 epochs on ``tiny_data`` at 64 px by the real command,
    in this process (a subprocess would spend seconds importing torch and Lightning again)."""
    from lightning_transfer.commands.cli import main

    workdir = tmp_path_factory.mktemp("tiny_run")
    before = os.getcwd()
    os.chdir(workdir)
    try:
        main([
            "fit", "--config", str(REPO / "configs" / "vgg16_feature_extraction_augmented.yaml"),
            "--data.root", str(tiny_data), "--data.image_size", str(TINY_SIZE), "--data.num_workers", "0",
            "--model.weights", "none", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--model.lr", "1e-3",
        ])
    finally:
        os.chdir(before)
    return workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture()
def planted_vgg16_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Random VGG16 weights planted where torchvision's weights API looks (TORCH_HOME hub cache)."""
    from torchvision.models import VGG16_Weights, vgg16

    torch.manual_seed(0)
    state = vgg16(weights=None).state_dict()
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / Path(VGG16_Weights.IMAGENET1K_V1.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return state
