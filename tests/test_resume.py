"""``--ckpt_path last``: last.ckpt is the last epoch (not the best), and it is found in earlier runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from conftest import TINY_SIZE
from lightning_transfer.callbacks.checkpointing import find_last_checkpoint, last_epoch_checkpoint
from lightning_transfer.commands.cli import main
from lightning_transfer.data import ImageFolderDataModule
from lightning_transfer.model import TransferClassifier
from lightning_transfer.utils.errors import UserError


def test_last_checkpoint_is_written_when_the_monitored_metric_does_not_improve(
    tiny_data: Path, tmp_path: Path
) -> None:
    # lr 0: the weights never change, so val_acc never improves after epoch 0 and Lightning 2.6's
    # own ModelCheckpoint would leave last.ckpt at epoch 0.
    model = TransferClassifier(
        backbone="efficientnet_lite0", weights="none", class_names=["cat", "dog"], image_size=TINY_SIZE,
        pool="avg", lr=0.0,
    )
    data = ImageFolderDataModule(
        root=str(tiny_data), image_size=TINY_SIZE, batch_size=8, num_workers=0, backbone="efficientnet_lite0",
        max_images_per_class=2,
    )
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max")
    trainer = Trainer(
        max_epochs=3, callbacks=[best, last_epoch_checkpoint(tmp_path)], logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, data)
    saved = sorted(path.name for path in tmp_path.iterdir())
    assert len(saved) == 2 and "last.ckpt" in saved  # the best (epoch 0) and the last
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 2


def touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_finds_the_newest_last_checkpoint_of_earlier_runs(tmp_path: Path) -> None:
    touch(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", 1000)
    newest = touch(tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt", 2000)
    touch(tmp_path / "lightning_logs" / "version_2" / "checkpoints" / "epoch03-val_acc0.900.ckpt", 3000)
    assert find_last_checkpoint(None, str(tmp_path)) == newest
    chosen = touch(tmp_path / "mine" / "last.ckpt", 500)
    assert find_last_checkpoint(str(tmp_path / "mine"), str(tmp_path)) == chosen


def test_no_last_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--ckpt_path last: nothing matches"):
        find_last_checkpoint(None, str(tmp_path))


def test_lightnings_save_last_is_refused_in_one_line(tiny_data: Path, capsys: pytest.CaptureFixture) -> None:
    """It would write last.ckpt beside ours, at best-epoch steps only."""
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--data.root", str(tiny_data), "--model.weights", "none", "--checkpoint.save_last", "true"])
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        "error: --checkpoint.save_last: last.ckpt is already written after every epoch; drop the option\n"
    )
