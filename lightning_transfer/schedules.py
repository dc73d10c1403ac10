"""Learning-rate schedules over a whole fit (``model.scheduler``), made of torch's schedulers.

``cosine``: an optional linear warm-up (``LinearLR``), then cosine annealing to 0
(``CosineAnnealingLR``), joined by ``SequentialLR``. ``onecycle``: ``OneCycleLR``, peaking at each
group's learning rate after the warm-up. Both step after every optimizer step.

Staged fine-tuning adds parameter groups in mid-run, but torch's schedulers fix one base learning
rate per group when they are built (``base_lrs``, taken from each group's ``initial_lr``; OneCycleLR
also keeps ``initial_lr``/``max_lr``/``min_lr`` in the group itself), and a group they do not know
breaks their next step. :func:`add_param_group` registers a late group everywhere a scheduler looks,
so it follows the same schedule as the first group, scaled to its own learning rate, from that step
on; the registration is part of the optimizer and scheduler state, so a resumed run has it too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

from lightning import Trainer
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR

from lightning_transfer.utils.errors import UserError

Schedule = Literal["none", "cosine", "onecycle"]
WARMUP_START_FACTOR = 0.01
"""The cosine schedule's warm-up rises linearly from 1% of the learning rate."""
ONECYCLE_WARMUP_FRACTION = 0.3
"""OneCycleLR's own default rising phase, used when no warm-up is given."""
ONECYCLE_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
"""What OneCycleLR computes a group's learning rate from, kept in the group."""


def plan_steps(trainer: Trainer, schedule: Schedule, warmup_epochs: float) -> tuple[int, int]:
    """(optimizer steps of the whole fit, warm-up steps), from the trainer's epochs, limits and batches."""
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise UserError(f"--model.scheduler {schedule} needs the run's length: set --trainer.max_epochs or "
                        "--trainer.max_steps")
    per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
    warmup = round(warmup_epochs * per_epoch)
    if warmup >= total:
        raise UserError(f"--model.warmup_epochs {warmup_epochs} is {warmup} steps, not fewer than the whole "
                        f"run's {int(total)}; use fewer warm-up epochs")
    return int(total), warmup


def build_scheduler(
    optimizer: Optimizer, schedule: Schedule, total_steps: int, warmup_steps: int
) -> LRScheduler | None:
    """The scheduler for ``total_steps`` optimizer steps, the first ``warmup_steps`` of them warming up.

    OneCycleLR does not cycle momentum here: RMSprop, the book's optimizer, would be given a momentum
    of 0.85-0.95 it never had.
    """
    if schedule == "none":
        return None
    if schedule == "onecycle":
        rising = warmup_steps / total_steps if warmup_steps else ONECYCLE_WARMUP_FRACTION
        peaks = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps, pct_start=rising, cycle_momentum=False)
    if not warmup_steps:
        return CosineAnnealingLR(optimizer, T_max=total_steps)
    warmup = LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, total_iters=warmup_steps)
    cosine = CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def nested(schedulers: Sequence[LRScheduler]) -> Iterator[LRScheduler]:
    """Each scheduler and the ones it chains (SequentialLR keeps them in ``_schedulers``: fenced in
    tests/test_dependency_fences.py)."""
    for scheduler in schedulers:
        yield scheduler
        yield from nested(getattr(scheduler, "_schedulers", []))


def add_param_group(optimizer: Optimizer, schedulers: Sequence[LRScheduler], group: dict) -> None:
    """Add ``group`` (with its base ``lr``) to ``optimizer`` in mid-run, scheduled like the first group.

    Its learning rate starts at the same point of the schedule as the first group's, times the ratio
    of their base learning rates. Without schedulers this is ``optimizer.add_param_group``.
    """
    if schedulers:
        first, base = optimizer.param_groups[0], group["lr"]
        if "max_lr" in first:  # OneCycleLR
            group.update({key: first[key] * base / first["max_lr"] for key in ONECYCLE_KEYS})
        else:  # the others scale their base_lrs (the groups' initial_lr) by the schedule's factor
            group.update(initial_lr=base, lr=first["lr"] * base / first["initial_lr"])
        for scheduler in nested(schedulers):
            if hasattr(scheduler, "base_lrs"):  # SequentialLR has none of its own
                scheduler.base_lrs.append(group["initial_lr"])
    optimizer.add_param_group(group)
