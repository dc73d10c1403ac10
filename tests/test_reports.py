"""Training curves after fit, the test report after test, and both in the run's own folder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from PIL import Image

from conftest import REPO, TINY_SIZE, run_cli
from lightning_transfer.callbacks import curves
from lightning_transfer.callbacks import test_report as report
from lightning_transfer.callbacks.curves import TrainingCurves, plot_curves, smooth
from lightning_transfer.data import ImageFolderDataModule
from lightning_transfer.model import TransferClassifier

CONFIG = str(REPO / "configs" / "vgg16_feature_extraction_augmented.yaml")


def test_smooth_is_the_books_moving_average() -> None:
    assert smooth([1.0, 0.0, 0.0], 0.8) == pytest.approx([1.0, 0.8, 0.64])
    assert smooth([2.0, 4.0], 0.0) == [2.0, 4.0]
    nan_kept = smooth([1.0, math.nan, 0.0], 0.5)
    assert math.isnan(nan_kept[1]) and nan_kept[2] == pytest.approx(0.5)


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    history = [
        {"epoch": 0.0, "train_acc": 0.6, "val_acc": 0.7, "train_loss": 0.9, "val_loss": 0.8},
        {"epoch": 1.0, "train_acc": 0.8, "train_loss": 0.5},  # an epoch without validation
    ]
    path = plot_curves(history, tmp_path / "curves.png", smoothing=0.8)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height


class FailAtEpoch(Callback):
    """Raises at the start of epoch ``epoch``. (Not KeyboardInterrupt: Lightning's answer to that
    ignores SIGINT for the rest of the process, which would be pytest's.)"""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: TransferClassifier) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("stop here")


@pytest.mark.parametrize(
    ("every_seconds", "stop_at", "expected_draws"),
    [(0, None, [1, 2, 3]), (3600, None, [3]), (3600, 2, [2])],
    ids=["every-epoch", "throttled-drawn-at-end", "throttled-drawn-on-failure"],
)
def test_curves_are_redrawn_at_most_every_n_seconds_and_always_at_the_end(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    every_seconds: float, stop_at: int | None, expected_draws: list[int],
) -> None:
    """Each draw is recorded by the number of epochs it shows; the last draw shows every finished epoch."""
    draws: list[int] = []
    monkeypatch.setattr(curves, "plot_curves", lambda history, path, smoothing: draws.append(len(history)))
    callbacks = [TrainingCurves(every_seconds=every_seconds)] + ([FailAtEpoch(stop_at)] if stop_at else [])
    trainer = Trainer(
        max_epochs=3, accelerator="cpu", default_root_dir=tmp_path, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        limit_train_batches=1, limit_val_batches=1,
    )
    model = TransferClassifier(backbone="vgg16", weights="none", class_names=["cat", "dog"], image_size=TINY_SIZE)
    data = ImageFolderDataModule(str(tiny_data), image_size=TINY_SIZE, backbone="vgg16", num_workers=0, batch_size=2)
    if stop_at is None:
        trainer.fit(model, data)
    else:
        with pytest.raises(RuntimeError, match="stop here"):
            trainer.fit(model, data)
    assert draws == expected_draws


def test_fit_writes_curves_and_logs_into_one_run_folder(tiny_checkpoint: Path) -> None:
    """CSV and TensorBoard logs, checkpoints, config and curves all land in lightning_logs/version_0."""
    run_dir = tiny_checkpoint.parents[1]
    assert run_dir.name == "version_0"
    assert [p.name for p in run_dir.parent.iterdir()] == ["version_0"]
    assert (run_dir / "config.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard event file in the run folder"
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"train_acc", "val_acc", "train_loss", "val_loss"} <= set(rows[0])
    assert {row["epoch"] for row in rows} == {"0", "1"}
    with Image.open(run_dir / "training_curves.png") as image:
        assert image.format == "PNG"


def test_classification_report_matches_a_hand_computation() -> None:
    # true: cat cat cat dog dog ; predicted: cat dog cat dog cat
    labels = torch.tensor([0, 0, 0, 1, 1])
    p_dog = torch.tensor([0.1, 0.7, 0.4, 0.9, 0.3])
    result = report.classification_report(torch.stack([1 - p_dog, p_dog], dim=1), labels, ["cat", "dog"])
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["confusion_matrix"] == [[2, 1], [1, 1]]
    cat, dog = result["classes"]["cat"], result["classes"]["dog"]
    assert (cat["precision"], cat["recall"], cat["support"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert (dog["precision"], dog["recall"], dog["support"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2), 2)
    assert dog["f1"] == pytest.approx(0.5)
    # ROC-AUC = share of (dog, cat) pairs where the dog scores higher: 0.9 beats 3 cats, 0.3 beats 1 (0.1)
    assert result["roc_auc"] == pytest.approx(4 / 6)
    assert "| dog | 0.500 | 0.500 | 0.500 | 2 |" in report.markdown_table(result)


def hand_metrics(rows: list[dict[str, str]], class_names: list[str]) -> dict:
    """Accuracy, per-class precision/recall and ROC-AUC computed by hand from predictions.csv rows."""
    truth = [Path(row["path"]).parent.name for row in rows]
    predicted = [row["label"] for row in rows]
    pairs = list(zip(truth, predicted))
    per_class = {}
    for name in class_names:
        tp = sum(t == p == name for t, p in pairs)
        per_class[name] = {
            "precision": tp / max(1, sum(p == name for p in predicted)),
            "recall": tp / sum(t == name for t in truth),
        }
    positive = class_names[1]
    pos = [float(r[f"p_{positive}"]) for r, t in zip(rows, truth) if t == positive]
    neg = [float(r[f"p_{positive}"]) for r, t in zip(rows, truth) if t != positive]
    auc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    return {"accuracy": sum(t == p for t, p in pairs) / len(pairs), "classes": per_class, "roc_auc": auc}


@pytest.mark.slow
def test_test_report_matches_the_predictions(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    common = ["--data.root", str(tiny_data), "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
              "--ckpt_path", str(tiny_checkpoint)]
    tested = run_cli("test", "--config", CONFIG, *common, cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert f"to {run_dir}" in tested.stdout and "| class | precision | recall | F1 | images |" in tested.stdout
    result = json.loads((run_dir / "test_report.json").read_text())
    with Image.open(run_dir / "test_confusion_matrix.png") as image:
        assert image.format == "PNG"

    predicted = run_cli("predict", *common, "--data.predict_path", str(tiny_data / "test"), cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with (tmp_path / "lightning_logs" / "version_1" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    expected = hand_metrics(rows, ["cat", "dog"])

    assert result["images"] == len(rows) == 8
    assert result["accuracy"] == pytest.approx(expected["accuracy"])
    assert result["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)
    for name, metrics in expected["classes"].items():
        for metric, value in metrics.items():
            assert result["classes"][name][metric] == pytest.approx(value), (name, metric)
    assert sum(map(sum, result["confusion_matrix"])) == 8


@pytest.mark.slow
def test_runs_without_a_log_folder_write_into_default_root_dir_not_the_current_one(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fast_dev_run`` swaps the loggers for a dummy one without a folder, and ``--trainer.logger
    false`` has none: every output goes to ``default_root_dir`` all the same."""
    from lightning_transfer.commands.cli import main

    here, root = tmp_path / "cwd", tmp_path / "root"
    here.mkdir()
    monkeypatch.chdir(here)
    common = ["--data.root", str(tiny_data), "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false", "--trainer.default_root_dir"]
    main(["fit", "--config", CONFIG, *common, str(root / "fit"), "--data.image_size", str(TINY_SIZE),
          "--model.weights", "none", "--trainer.fast_dev_run", "1",
          "--trainer.callbacks+=lightning_transfer.callbacks.GradCamLogger"])
    main(["test", "--ckpt_path", str(tiny_checkpoint), *common, str(root / "test"), "--trainer.logger", "false"])
    assert list(here.iterdir()) == []
    assert (root / "fit" / "training_curves.png").is_file()
    assert (root / "fit" / "gradcam" / "epoch00.png").is_file()  # no TensorBoard: Grad-CAM grids as PNGs
    assert {path.name for path in (root / "test").iterdir()} >= {"test_report.json", "test_confusion_matrix.png"}
