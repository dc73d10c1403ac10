"""Learning-rate schedules (``model.scheduler``): their shape, groups added by fine-tuning stages, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from torch.optim.lr_scheduler import LRScheduler

from conftest import TINY_SIZE
from lightning_transfer.callbacks import Stage, StagedFinetuning, last_epoch_checkpoint
from lightning_transfer.data import ImageFolderDataModule
from lightning_transfer.model import TransferClassifier
from lightning_transfer.schedules import add_param_group, build_scheduler
from lightning_transfer.utils.errors import UserError

LR = 1e-3
STEPS = 12


def optimizer_with_groups(count: int) -> torch.optim.Optimizer:
    return torch.optim.RMSprop([{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(count)], lr=LR)


def run_steps(optimizer: torch.optim.Optimizer, scheduler: LRScheduler, steps: range, on_step=None) -> list[list]:
    """Learning rate of every group before each step; ``on_step(step)`` may add a group first."""
    lrs = []
    for step in steps:
        if on_step:
            on_step(step)
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(("schedule", "warmup"), [("cosine", 0), ("cosine", 4), ("onecycle", 0), ("onecycle", 4)])
def test_a_group_added_in_mid_run_follows_the_schedule_scaled_to_its_lr(schedule: str, warmup: int) -> None:
    """A group added at step 2 (inside the warm-up, which then ends at step 4) is at every later step
    the first group's learning rate times the ratio of their base rates, as if it had been there all along."""
    optimizer = optimizer_with_groups(1)
    scheduler = build_scheduler(optimizer, schedule, STEPS, warmup)

    def add_at_step_2(step: int) -> None:
        if step == 2:
            group = {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": LR * 0.1}
            add_param_group(optimizer, [scheduler], group)

    lrs = run_steps(optimizer, scheduler, range(STEPS), add_at_step_2)
    first = [row[0] for row in lrs]
    assert [row[1] for row in lrs[2:]] == pytest.approx([lr * 0.1 for lr in first[2:]], rel=1e-9)
    assert first[-1] < first[warmup or 4] / 5  # it decays
    if warmup:
        assert first[0] < first[1] < first[warmup]  # it warms up


def test_cosine_without_warmup_is_the_textbook_curve() -> None:
    optimizer = optimizer_with_groups(1)
    lrs = run_steps(optimizer, build_scheduler(optimizer, "cosine", STEPS, 0), range(STEPS))
    expected = [LR * (1 + math.cos(math.pi * t / STEPS)) / 2 for t in range(STEPS)]
    assert [row[0] for row in lrs] == pytest.approx(expected)


def test_no_schedule_is_no_scheduler() -> None:
    assert build_scheduler(optimizer_with_groups(1), "none", STEPS, 0) is None


# --------------------------------------------------------------------------- in a Trainer


class LrRecorder(Callback):
    """(epoch, {group name: lr}) before every training step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float]]] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: TransferClassifier, batch: dict, batch_idx: int
    ) -> None:
        groups = trainer.optimizers[0].param_groups
        self.steps.append((trainer.current_epoch, {group["name"]: group["lr"] for group in groups}))


class StopAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: TransferClassifier) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("stop here")


def fit(data: Path, workdir: Path, schedule: str, epochs: int = 3, ckpt_path: Path | None = None,
        stop_at: int | None = None, warmup_epochs: float = 0.0) -> LrRecorder:
    """Fine-tune EfficientNet-Lite0 (random weights) on 4 tiny images, 2 steps per epoch; ``top`` is
    unfrozen at epoch 1 with a tenth of the head's learning rate."""
    torch.manual_seed(0)
    model = TransferClassifier(
        backbone="efficientnet_lite0", weights="none", class_names=["cat", "dog"], image_size=TINY_SIZE,
        pool="avg", lr=LR, scheduler=schedule, warmup_epochs=warmup_epochs,
    )
    datamodule = ImageFolderDataModule(
        root=str(data), image_size=TINY_SIZE, batch_size=2, num_workers=0, backbone="efficientnet_lite0",
        max_images_per_class=2,
    )
    recorder = LrRecorder()
    callbacks = [StagedFinetuning([Stage(1, ["top"], 0.1)]), recorder, last_epoch_checkpoint(workdir)]
    trainer = Trainer(
        max_epochs=epochs, callbacks=callbacks + ([StopAtEpoch(stop_at)] if stop_at else []), logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=workdir,
    )
    if stop_at:
        with pytest.raises(RuntimeError, match="stop here"):
            trainer.fit(model, datamodule)
    else:
        trainer.fit(model, datamodule, ckpt_path=ckpt_path, weights_only=True)
    return recorder


WARMUP = {"cosine": 0.0, "onecycle": 1.0}


@pytest.fixture(scope="module")
def uninterrupted(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list]]:
    """Per schedule: the folder of a 3-epoch run (its last.ckpt) and its learning rates at every step."""
    runs = {}
    for schedule, warmup in WARMUP.items():
        workdir = tmp_path_factory.mktemp(schedule)
        runs[schedule] = workdir, fit(tiny_data, workdir, schedule, warmup_epochs=warmup).steps
    return runs


def test_cosine_lowers_the_lr_across_epochs_and_the_stage_follows_it(uninterrupted: dict) -> None:
    steps = uninterrupted["cosine"][1]
    heads = [lrs["head"] for _, lrs in steps]
    assert len(steps) == 6 and all(later < earlier for earlier, later in zip(heads, heads[1:]))
    assert heads == pytest.approx([LR * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(6)])
    staged = [(epoch, lrs) for epoch, lrs in steps if "top" in lrs]
    assert [epoch for epoch, _ in staged] == [1, 1, 2, 2]  # added at epoch 1, at its scheduled rate
    assert [lrs["top"] for _, lrs in staged] == pytest.approx([lrs["head"] * 0.1 for _, lrs in staged])


def test_onecycle_warms_up_then_anneals_and_the_stage_follows_it(uninterrupted: dict) -> None:
    steps = uninterrupted["onecycle"][1]
    heads = [lrs["head"] for _, lrs in steps]
    assert heads[0] < heads[1] == pytest.approx(LR)  # the peak at the warm-up epoch's last step (of 2)
    assert all(later < earlier for earlier, later in zip(heads[1:], heads[2:]))
    staged = [lrs for epoch, lrs in steps if "top" in lrs]
    assert len(staged) == 4 and [lrs["top"] for lrs in staged] == pytest.approx([lrs["head"] * 0.1 for lrs in staged])


@pytest.mark.parametrize("schedule", sorted(WARMUP))
def test_resume_restores_the_schedule_and_the_stage_group(
    uninterrupted: dict, tiny_data: Path, tmp_path: Path, schedule: str
) -> None:
    """Stopped at the start of epoch 2 and resumed from last.ckpt (end of epoch 1, after the stage
    was added), the last epoch's rates are those of the uninterrupted run."""
    fit(tiny_data, tmp_path, schedule, stop_at=2, warmup_epochs=WARMUP[schedule])
    resumed = fit(tiny_data, tmp_path, schedule, ckpt_path=tmp_path / "last.ckpt", warmup_epochs=WARMUP[schedule])
    assert [epoch for epoch, _ in resumed.steps] == [2, 2]
    expected = [(epoch, pytest.approx(lrs)) for epoch, lrs in uninterrupted[schedule][1] if epoch == 2]
    assert resumed.steps == expected


def test_resuming_with_another_run_length_is_refused(uninterrupted: dict, tiny_data: Path) -> None:
    workdir = uninterrupted["cosine"][0]
    with pytest.raises(UserError, match="cosine schedule spans 6 steps, this one 10"):
        fit(tiny_data, workdir, "cosine", epochs=5, ckpt_path=workdir / "last.ckpt")


def test_bad_schedule_settings_are_refused(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="warmup_epochs 3 is 6 steps, not fewer than the whole run's 6"):
        fit(tiny_data, tmp_path, "cosine", warmup_epochs=3)
    with pytest.raises(UserError, match="use a positive lr"):
        TransferClassifier(backbone="vgg16", weights="none", lr=0.0, scheduler="cosine")
