"""Checkpoints are untrusted input: code in a pickle never runs, foreign files give one clear line."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from conftest import TINY_SIZE, run_cli
from lightning_transfer import load_model, read_checkpoint
from lightning_transfer.commands import cli
from lightning_transfer.utils.errors import UserError

OUR_HPARAMS = {"backbone": "vgg16", "image_size": TINY_SIZE, "num_classes": 2, "class_names": ["cat", "dog"]}


class CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture()
def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint that looks like ours but creates ``marker`` when unpickled; returns (checkpoint, marker)."""
    marker = tmp_path / "code_ran.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": dict(OUR_HPARAMS), "payload": CreatesMarker(marker)}, path)
    return path, marker


def test_the_evil_checkpoint_really_runs_code_when_unpickled_unsafely(evil_checkpoint):
    path, marker = evil_checkpoint
    torch.load(path, weights_only=False)  # what an unsafe loader does: proves the payload works
    assert marker.exists()


def test_malicious_pickle_is_refused_and_runs_nothing(evil_checkpoint):
    path, marker = evil_checkpoint
    for load in (read_checkpoint, load_model):
        with pytest.raises(UserError, match=r"refusing to load .*evil.ckpt.*: it calls .*open, which could run"):
            load(path)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["test", "predict", "visualize", "demo"])
def test_commands_refuse_a_malicious_checkpoint_even_when_torch_is_told_to_trust_files(
    command, evil_checkpoint, tiny_data, tmp_path
):
    path, marker = evil_checkpoint
    image = next((tiny_data / "test" / "cat").glob("*.jpg"))
    args = {
        "test": ["test", "--data.root", str(tiny_data), "--data.num_workers", "0"],
        "predict": ["predict", "--data.predict_path", str(image)],
        "visualize": ["visualize", "gradcam", "--image", str(image), "--out", str(tmp_path / "viz")],
        "demo": ["demo"],
    }[command]
    result = run_cli(*args, "--ckpt_path", str(path), cwd=tmp_path, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: refusing to load")
    assert "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_lightning_loads_the_checkpoint_with_weights_only_too(evil_checkpoint, tiny_data, tmp_path, monkeypatch):
    """Even if the file changed after our own check, Lightning's load is explicitly weights_only."""
    path, marker = evil_checkpoint
    hparams = {"hyper_parameters": {**OUR_HPARAMS, "weights": "none"}, "state_dict": {}}
    monkeypatch.setattr(cli, "read_model_checkpoint", lambda _: hparams)  # our check fooled
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's default undone
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        cli.main(["test", "--ckpt_path", str(path), "--data.root", str(tiny_data), "--data.num_workers", "0",
                  "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_gives_one_line(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": OUR_HPARAMS}, tmp_path / "whole.ckpt")
    whole = (tmp_path / "whole.ckpt").read_bytes()
    files = {"text.ckpt": b"hi\n", "noise.ckpt": bytes(range(256)) * 4, "empty.ckpt": b""}
    files["cut_short.ckpt"] = whole[:2000]
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=rf"'{tmp_path / name}' is not a checkpoint") as caught:
            read_checkpoint(tmp_path / name)
        assert "\n" not in str(caught.value)


class OtherModel(BoringModel):
    """Somebody else's LightningModule, with hyperparameters of its own."""

    def __init__(self, hidden: int = 4, backbone: str = "resnet18") -> None:
        super().__init__()
        self.save_hyperparameters()


def test_checkpoints_of_other_models_are_refused_clearly(tmp_path):
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(OtherModel())
    trainer.save_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="is not a lightning-transfer checkpoint"):
        read_checkpoint(tmp_path / "other.ckpt")

    foreign = {**OUR_HPARAMS, "hidden": 4}  # has our keys and one we do not know
    torch.save({"state_dict": {}, "hyper_parameters": foreign}, tmp_path / "lookalike.ckpt")
    with pytest.raises(UserError, match=r"written by another model \(hyperparameters \['hidden'\]"):
        load_model(tmp_path / "lookalike.ckpt")


@pytest.mark.slow
def test_cli_refuses_other_models_urls_and_missing_last_in_one_line(tmp_path):
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, tmp_path / "other.ckpt")
    cases = {
        str(tmp_path / "other.ckpt"): "is not a lightning-transfer checkpoint",
        "https://example.com/model.ckpt": "is not a file; pass a .ckpt",
        "last": "--ckpt_path last: nothing matches",
    }
    for ckpt_path, expected in cases.items():
        result = run_cli("predict", "--ckpt_path", ckpt_path, "--data.predict_path", str(tmp_path), cwd=tmp_path)
        assert result.returncode != 0
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith("error: ") and expected in last_line, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
