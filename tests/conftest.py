"""Shared fixtures: tiny image folders cut from the shared dataset, tiny checkpoints, planted weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def make_tiny_dataset(root: Path, per_class: dict[str, int], size: int = TINY_SIZE) -> Path:
    """Copy the first N real photos per class and split, downscaled, into ``root``."""
    for split, count in per_class.items():
        for name in ("cat", "dog"):
            out = root / split / name
            out.mkdir(parents=True, exist_ok=True)
            sources = sorted((SHARED_DATA / split / name).glob("*.jpg"))[:count]
            assert len(sources) == count, f"need {count} images in {SHARED_DATA / split / name}"
            for source in sources:
                Image.open(source).convert("RGB").resize((size, size)).save(out / source.name)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train 8, val 4, test 4 images per class, 64 px: a real folder layout that trains in seconds."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"), {"train": 8, "val": 4, "test": 4})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A VGG16 (random weights) classifier fit for 2 epochs on ``tiny_data`` at 64 px, via the CLI."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    result = run_cli(
        "fit", "--config", str(REPO / "configs" / "vgg16_feature_extraction_augmented.yaml"),
        "--data.root", str(tiny_data), "--data.image_size", str(TINY_SIZE), "--data.num_workers", "0",
        "--model.weights", "none", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--model.lr", "1e-3", cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
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
