"""How a split's images are shared out among several processes.

Training: every process gets as many images as the others (DistributedSampler's way), so all run
the same number of steps. Evaluation: every image in exactly one process's share.

Lightning shares out validation and test images with torch's ``DistributedSampler``, which repeats
images until every share is equally long: 7 test images on 2 processes would test one image twice
and count it twice in ``val_acc``/``test_acc`` and the test report. Here the shares are the
unrepeated ones Lightning's own ``predict`` uses: their lengths differ by at most one and no image
is in two. That is safe outside training, where a step makes no collective call that a process with
one batch less would leave waiting (metrics are synced once, at the epoch's end); but every process
needs at least one image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler

from lightning_transfer.utils.errors import UserError

if TYPE_CHECKING:
    from lightning import Trainer


def check_shares(images: int, trainer: Trainer | None, task: str) -> None:
    """Refuse fewer images than processes: an empty share would stop Lightning with an assertion."""
    processes = trainer.world_size if trainer is not None else 1
    if images < processes:
        raise UserError(
            f"{images} image(s) to {task} on {processes} processes; "
            f"use --trainer.devices {images} or fewer, or {task} more images"
        )


def evaluation_sampler(dataset: Dataset, trainer: Trainer | None) -> Sampler | None:
    """This process's unrepeated share of ``dataset``, in order; None (all of it) without several processes.

    A ``DistributedSampler`` subclass, so Lightning keeps it instead of putting its own in.
    """
    shares = trainer.distributed_sampler_kwargs if trainer is not None else None
    if not shares:
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False, **shares)


def shard_indices(count: int, rank: int, world_size: int, evaluation: bool) -> list[int]:
    """Process ``rank``'s share of ``count`` items, dealt every ``world_size``-th, as the samplers
    above deal them: for training, the list first padded from its start so every share is equally
    long (processes must run the same number of steps), repeated whole if it is shorter than the
    padding; for evaluation, unrepeated."""
    indices = list(range(count))
    if not evaluation and count:
        padded = -(-count // world_size) * world_size
        indices = (indices * -(-padded // count))[:padded]
    return indices[rank::world_size]
