"""Interrupted and multi-process fits, run as a user runs them: the CLI in a subprocess, tiny data."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_SIZE, make_tiny_dataset, run_cli
from lightning_transfer import read_checkpoint
from lightning_transfer.callbacks.gathering import gather_by_path
from lightning_transfer.data.sharding import check_shares, evaluation_sampler
from lightning_transfer.utils.errors import UserError

BATCH_SIZE = 4
FIT = (
    "fit", "--data.image_size", str(TINY_SIZE), "--data.num_workers", "0", "--data.batch_size", str(BATCH_SIZE),
    "--model.backbone", "efficientnet_lite0", "--model.weights", "none", "--model.pool", "avg",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
)


def interrupt_after_two_epochs(workdir: Path, data: Path, signum: signal.Signals) -> tuple[int, str, Path]:
    """Start a long fit, send ``signum`` once last.ckpt has been written twice; returns (exit code, stderr, last).

    ``lr 0``: val_acc never improves, so only the epoch-end last.ckpt callback can write it a second
    time (Lightning 2.6's ``save_last`` alone would not).
    """
    last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    with open(workdir / "stdout.txt", "w") as stdout, open(workdir / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "lightning_transfer", *FIT, "--data.root", str(data), "--model.lr", "0",
             "--trainer.max_epochs", "1000"],
            cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=stdout, stderr=stderr,
        )
        try:
            writes: set[int] = set()
            deadline = time.monotonic() + 300
            while len(writes) < 2:
                assert process.poll() is None, (workdir / "stderr.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "last.ckpt not rewritten within 5 minutes"
                if last.exists():
                    writes.add(last.stat().st_mtime_ns)
                time.sleep(0.05)
            process.send_signal(signum)
            returncode = process.wait(timeout=300)
        finally:
            process.kill()
    return returncode, (workdir / "stderr.txt").read_text(), last


@pytest.mark.slow
def test_ctrl_c_keeps_a_resumable_last_ckpt_and_ckpt_path_last_resumes(tiny_data, tmp_path):
    returncode, stderr, last = interrupt_after_two_epochs(tmp_path, tiny_data, signal.SIGINT)
    assert returncode == 1  # Lightning's graceful shutdown
    assert f"interrupted: {last}" in stderr and "resume with --ckpt_path last" in stderr
    checkpoint = read_checkpoint(last)
    epoch, steps_per_epoch = checkpoint["epoch"], 2 * 8 // BATCH_SIZE
    assert epoch >= 1 and checkpoint["global_step"] == (epoch + 1) * steps_per_epoch  # a whole epoch, not the best

    resumed = run_cli(*FIT, "--data.root", str(tiny_data), "--trainer.max_epochs", str(epoch + 3),
                      "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {last.relative_to(tmp_path)}" in resumed.stderr
    final = read_checkpoint(tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt")
    assert final["epoch"] == epoch + 2 and final["global_step"] == (epoch + 3) * steps_per_epoch


@pytest.mark.slow
def test_sigterm_keeps_a_valid_last_ckpt_and_exits_like_a_terminated_process(tiny_data, tmp_path):
    returncode, stderr, last = interrupt_after_two_epochs(tmp_path, tiny_data, signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM
    assert f"interrupted: {last}" in stderr
    assert read_checkpoint(last)["epoch"] >= 1


@pytest.mark.slow
def test_two_process_ddp_fit_on_cpu_checks_images_once_and_writes_one_run(tmp_path):
    data = make_tiny_dataset(tmp_path / "data", {"train": 4, "val": 2})
    (data / "train" / "cat" / "broken.jpg").write_text("not a picture")
    (tmp_path / "run").mkdir()
    result = run_cli(
        *FIT, "--data.root", str(data), "--trainer.max_epochs", "1",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        cwd=tmp_path / "run", env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Starting with 2 processes" in output
    assert output.count("1 unreadable image") == 1  # one warning, from rank 0
    runs = list((tmp_path / "run" / "lightning_logs").iterdir())
    assert [run.name for run in runs] == ["version_0"]  # one run folder, not one per process
    assert "broken.jpg: not an image format PIL can identify" in (runs[0] / "bad_images_train.txt").read_text()
    checkpoint = read_checkpoint(runs[0] / "checkpoints" / "last.ckpt")
    assert checkpoint["hyper_parameters"]["class_names"] == ["cat", "dog"]


@pytest.mark.slow
def test_two_process_ddp_predict_writes_every_image_once_like_one_process(tiny_checkpoint, tiny_data, tmp_path):
    """5 images over 2 processes: shares of 3 and 2 gathered into one CSV, in the images' order."""
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((tiny_data / "test").rglob("*.jpg"))[:5]:
        shutil.copy(path, images / f"{path.parent.name}_{path.name}")

    def predict(devices: str, strategy: str) -> list[dict[str, str]]:
        output = tmp_path / f"predictions_{devices}.csv"
        result = run_cli(
            "predict", "--ckpt_path", str(tiny_checkpoint), "--data.predict_path", str(images),
            "--data.num_workers", "0", "--data.batch_size", "2", "--predictions.output", str(output),
            "--trainer.accelerator", "cpu", "--trainer.devices", devices, "--trainer.strategy", strategy,
            "--trainer.enable_progress_bar", "false", cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert (result.stdout + result.stderr).count(f"wrote 5 predictions to {output}") == 1
        return list(csv.DictReader(output.open()))

    one, two = predict("1", "auto"), predict("2", "ddp")
    assert [row["path"] for row in one] == sorted(str(path) for path in images.iterdir())
    assert [row["path"] for row in two] == [row["path"] for row in one]
    for single, shared in zip(one, two):
        assert shared["label"] == single["label"]
        assert float(shared["p_cat"]) == pytest.approx(float(single["p_cat"]), abs=1e-5)


@pytest.mark.slow
def test_ddp_predict_with_fewer_images_than_processes_is_one_line(tiny_checkpoint, tiny_data, tmp_path):
    image = next((tiny_data / "test" / "cat").glob("*.jpg"))
    result = run_cli(
        "predict", "--ckpt_path", str(tiny_checkpoint), "--data.predict_path", str(image),
        "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false", cwd=tmp_path, timeout=300,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 1 image(s) to predict on 2 processes; use --trainer.devices 1 or fewer, or predict more images"
    )


class FakeTrainer:
    """What the sharing helpers read from a Trainer: the processes and this one's rank."""

    def __init__(self, processes: int, rank: int = 0) -> None:
        self.world_size = processes
        self.distributed_sampler_kwargs = {"num_replicas": processes, "rank": rank} if processes > 1 else None


def test_evaluation_shares_hold_every_image_once_and_refuse_empty_ones() -> None:
    images = list(range(7))
    shares = [list(evaluation_sampler(images, FakeTrainer(2, rank))) for rank in (0, 1)]
    assert shares == [[0, 2, 4, 6], [1, 3, 5]]  # Lightning's own DistributedSampler tests image 0 twice
    assert evaluation_sampler(images, FakeTrainer(1)) is None  # one process: the loader reads them in order
    check_shares(2, FakeTrainer(2), "test")
    with pytest.raises(UserError, match=r"^1 image\(s\) to test on 2 processes; use --trainer.devices 1 or fewer"):
        check_shares(1, FakeTrainer(2), "test")


def test_gathered_rows_keep_each_image_once_in_path_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shares as torch's DistributedSampler pads them: 3 images on 2 processes, ``a`` in both."""
    shares = [[("b", 1), ("a", 0)], [("c", 2), ("a", 0)]]

    def all_gather_object(output: list, rows: list) -> None:
        output[:] = shares

    monkeypatch.setattr("torch.distributed.all_gather_object", all_gather_object)
    assert gather_by_path(FakeTrainer(2), shares[0]) == [("a", 0), ("b", 1), ("c", 2)]
    assert gather_by_path(FakeTrainer(1), [("b", 1), ("a", 0)]) == [("a", 0), ("b", 1)]


@pytest.mark.slow
def test_two_process_ddp_test_counts_every_image_once_like_one_process(tiny_checkpoint, tiny_data, tmp_path):
    """7 test images (odd) on 2 processes: the report and the logged metrics equal one process's."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    next((data / "test" / "dog").glob("*.jpg")).unlink()

    def test(devices: str, strategy: str) -> tuple[dict, dict[str, str]]:
        run = tmp_path / f"run_{devices}"
        result = run_cli(
            "test", "--ckpt_path", str(tiny_checkpoint), "--data.root", str(data), "--data.num_workers", "0",
            "--data.batch_size", "2", "--trainer.accelerator", "cpu", "--trainer.devices", devices,
            "--trainer.strategy", strategy, "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(run), cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "replicates some samples" not in result.stderr  # Lightning's warning about its padded shares
        folder = run / "lightning_logs" / "version_0"
        metrics = next(row for row in csv.DictReader((folder / "metrics.csv").open()) if row.get("test_acc"))
        return json.loads((folder / "test_report.json").read_text()), metrics

    (one, one_metrics), (two, two_metrics) = test("1", "auto"), test("2", "ddp")
    assert one["images"] == two["images"] == 7
    assert sum(map(sum, two["confusion_matrix"])) == 7
    assert two["confusion_matrix"] == one["confusion_matrix"]
    assert two["accuracy"] == one["accuracy"]
    assert two["roc_auc"] == pytest.approx(one["roc_auc"], abs=1e-6)
    assert float(two_metrics["test_acc"]) == pytest.approx(float(one_metrics["test_acc"]), abs=1e-6)
    assert float(two_metrics["test_acc"]) == pytest.approx(one["accuracy"], abs=1e-6)
    assert float(two_metrics["test_loss"]) == pytest.approx(float(one_metrics["test_loss"]), rel=1e-5)
