"""Checkpoints written before the head had named parts (``head.1.weight``, ``head.4.bias``) still load:
for ``load_model`` (visualize, demo), ``--model.init_from``, and ``--ckpt_path`` resumes and tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, run_cli
from lightning_transfer import TransferClassifier, create_backbone, load_model

FIXTURE = REPO / "tests" / "fixtures" / "old_head_positions.ckpt"
"""``last.ckpt`` of a 2-epoch ``fit`` by the code before the change (commit f669b20): VGG16 with random
weights, 32 px, ``pool: avg``, ``head_hidden: 8``, classes cat and dog. Its 26 backbone tensors (58 MB),
whose keys did not change, were left out of the file; ``old_checkpoint`` puts random ones back."""


@pytest.fixture()
def old_checkpoint(tmp_path: Path) -> Path:
    checkpoint = torch.load(FIXTURE, weights_only=True)
    backbone = create_backbone("vgg16", "none").to(memory_format=torch.channels_last)
    checkpoint["state_dict"].update({f"backbone.{key}": value for key, value in backbone.state_dict().items()})
    path = tmp_path / "old.ckpt"
    torch.save(checkpoint, path)
    return path


def old_head(pooled: torch.Tensor) -> torch.Tensor:
    """The old head's classifier part (``head.1`` .. ``head.4``), from the fixture's own tensors."""
    state = torch.load(FIXTURE, weights_only=True)["state_dict"]
    hidden = F.relu(F.linear(pooled, state["head.1.weight"], state["head.1.bias"]))
    return F.linear(hidden, state["head.4.weight"], state["head.4.bias"])


def test_the_fixture_has_the_old_key_layout() -> None:
    keys = set(torch.load(FIXTURE, weights_only=True)["state_dict"])
    assert keys == {"head.1.weight", "head.1.bias", "head.4.weight", "head.4.bias"}


def test_load_model_maps_the_old_head_keys_onto_the_named_parts(old_checkpoint: Path) -> None:
    model = load_model(old_checkpoint)
    pooled = torch.randn(5, 512)
    with torch.no_grad():
        torch.testing.assert_close(model.head.classifier(pooled), old_head(pooled))
    assert model.class_names == ["cat", "dog"] and model.image_size == 32


def test_init_from_an_old_checkpoint(old_checkpoint: Path) -> None:
    model = TransferClassifier(
        backbone="vgg16", weights="none", class_names=["cat", "dog"], image_size=32, pool="avg", head_hidden=8,
        init_from=str(old_checkpoint),
    )
    pooled = torch.randn(3, 512)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().head.classifier(pooled), old_head(pooled))


@pytest.mark.slow
def test_old_checkpoint_resumes_a_fit_and_tests_from_the_command_line(
    old_checkpoint: Path, tiny_data: Path, tmp_path: Path
) -> None:
    common = ["--data.root", str(tiny_data), "--data.num_workers", "0", "--trainer.enable_progress_bar", "false"]
    fit = run_cli(
        "fit", "--config", str(REPO / "configs" / "vgg16_feature_extraction_augmented.yaml"), *common,
        "--ckpt_path", str(old_checkpoint), "--data.image_size", "32", "--trainer.max_epochs", "3", cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "Restored all states" in fit.stdout + fit.stderr
    resumed = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=True)["epoch"] == 2  # the old run ended after epoch 1
    test = run_cli("test", "--ckpt_path", str(old_checkpoint), *common, cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test_acc" in test.stdout
