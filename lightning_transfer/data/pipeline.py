"""Which input pipeline a run uses (``data.pipeline``): loader worker processes that decode and
augment every epoch, or splits decoded once and held on the model's device; and assembling the latter.

The device pipeline pays where the model is fast enough to wait on JPEG decoding: on a GPU, which
loader workers fed a few percent of what it computes, and for fast feature extraction on a CPU,
where the conv base then runs with every core instead of leaving cores to loader workers (1.9x the
workers' speed, docs/performance.md section 7). Augmented training on a CPU keeps the workers: the
model's own arithmetic dominates there, and that is what every CPU measurement was made with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from lightning_transfer.backbones import Preprocessing
from lightning_transfer.data.decoded_split import DecodedSplit, decoded_bytes
from lightning_transfer.data.device_augment import batch_transform
from lightning_transfer.data.device_batches import DeviceBatches
from lightning_transfer.data.sharding import shard_indices
from lightning_transfer.utils.errors import UserError

if TYPE_CHECKING:
    from lightning import Trainer

Pipeline = Literal["auto", "workers", "device"]

MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class Placement:
    """Where a process's data goes: its rank among ``world_size`` processes, the model's device, and
    how many processes share this machine's memory."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    processes_per_node: int = 1

    @classmethod
    def of(cls, trainer: Trainer | None) -> Placement:
        """From a Lightning Trainer's public attributes (the data module does not reach for the model)."""
        if trainer is None:
            return cls()
        return cls(trainer.global_rank, trainer.world_size, trainer.strategy.root_device, trainer.num_devices)

    def shard(self, count: int, evaluation: bool) -> list[int]:
        """This process's share of ``count`` images (``sharding.shard_indices``)."""
        return shard_indices(count, self.rank, self.world_size, evaluation)


def decoded_need(counts: Sequence[int], image_size: int, placement: Placement, extraction: bool) -> int:
    """Bytes the device pipeline takes on ``placement.device`` for splits of ``counts`` images.

    For fast feature extraction, one whole split at a time in one process per node; for training,
    every split's shard in each process, and on the CPU all of this node's processes together.
    """
    if extraction:
        return decoded_bytes(max(counts, default=0), image_size)
    per_process = decoded_bytes(sum(-(-count // placement.world_size) for count in counts), image_size)
    return per_process * (placement.processes_per_node if placement.device.type == "cpu" else 1)


def free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``: CUDA's free memory, or the host's available memory
    (Linux); None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and MEMINFO.is_file():
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def least_free_memory(trainer: Trainer | None, device: torch.device) -> int | None:
    """``free_memory`` on the process's device, the least over all processes: every process then
    chooses the same pipeline and refuses the same one (one that stopped alone, or chose otherwise,
    would leave the others waiting in the next collective call)."""
    free = free_memory(device)
    if trainer is None or trainer.world_size == 1:
        return free
    unknown = torch.iinfo(torch.int64).max  # no limit, as None means alone
    every = trainer.strategy.all_gather(torch.tensor(unknown if free is None else free, device=device))
    least = int(every.min())
    return None if least == unknown else least


def _mb(size: int) -> str:
    megabytes = size / 2**20
    return f"{megabytes:,.1f} MB" if megabytes < 10 else f"{megabytes:,.0f} MB"


def choose_pipeline(
    requested: Pipeline,
    device: torch.device,
    needed: int,
    fraction: float,
    free: int | None,
    extraction: bool,
) -> tuple[Literal["workers", "device"], str | None]:
    """The pipeline to use and, for ``auto``, one line saying why (None otherwise).

    ``needed``: bytes the decoded images take on ``device``; ``free``: what ``free_memory`` found
    there (None: unknown, no limit); the budget is ``fraction`` of it. ``extraction``: the images
    only feed fast feature extraction (said in the line). An explicit ``device`` that does not fit
    is a UserError.
    """
    budget = None if free is None else int(free * fraction)
    fits = budget is None or needed <= budget
    if requested == "workers":
        return "workers", None
    if requested == "device":
        if not fits:
            raise UserError(
                f"data.pipeline device needs {_mb(needed)} on {device} for the decoded images, more than its "
                f"budget of {_mb(budget)} (data.device_memory_fraction {fraction:g} of {_mb(free)} free); "
                "lower data.image_size or data.max_images_per_class, raise data.device_memory_fraction, "
                "or use data.pipeline workers"
            )
        return "device", None
    if not (device.type == "cuda" or (device.type == "cpu" and extraction)):
        return "workers", (
            f"data.pipeline auto: workers (the model is on {device}; decoding once onto the device pays on "
            "a GPU and for feature extraction)"
        )
    room = f"{_mb(needed)} of decoded images" + ("" if budget is None else f", budget {_mb(budget)}")
    if not fits:
        return "workers", (
            f"data.pipeline auto: workers ({room}: more than data.device_memory_fraction {fraction:g} "
            f"of the {_mb(free)} free on {device})"
        )
    purpose = "feature extraction reads" if extraction else "training reads"
    return "device", f"data.pipeline auto: device ({purpose} images decoded once on {device}; {room})"


class InputPipeline:
    """A data module's ``pipeline`` setting: chosen once per stage at its first loader, then used to
    build the device pipeline's splits and batches."""

    def __init__(self, requested: Pipeline, device_memory_fraction: float, keep_decoded: bool | None) -> None:
        if keep_decoded:
            raise UserError(
                "data.keep_decoded is retired: use --data.pipeline device, which decodes each split once "
                "and keeps it in memory (on the GPU, or on the CPU), and drop data.keep_decoded"
            )
        if not 0 < device_memory_fraction <= 1:
            raise UserError(f"data.device_memory_fraction={device_memory_fraction} must be in (0, 1]")
        self.requested = requested
        self.device_memory_fraction = device_memory_fraction
        self.chosen: Literal["workers", "device"] | None = None

    def choose(self, trainer: Trainer | None, counts: Sequence[int], image_size: int, extraction: bool) -> str:
        """``workers`` or ``device`` for splits of ``counts`` images; ``auto`` says why, from rank 0."""
        if self.chosen is None:
            placement = Placement.of(trainer)
            needed = decoded_need(counts, image_size, placement, extraction)
            free = None if self.requested == "workers" else least_free_memory(trainer, placement.device)
            self.chosen, message = choose_pipeline(
                self.requested, placement.device, needed, self.device_memory_fraction, free, extraction
            )
            if message and placement.rank == 0:
                print(message)
        return self.chosen

    def reset(self) -> None:
        """The next stage chooses again (``teardown``)."""
        self.chosen = None

    @staticmethod
    def batches(
        paths: Sequence[Path],
        labels: Sequence[int],
        name: str,
        placement: Placement,
        preprocessing: Preprocessing,
        image_size: int,
        batch_size: int,
        shuffle: bool,
        augment: bool,
        evaluation: bool,
    ) -> DeviceBatches:
        """This process's shard of a split, decoded once on its device, as batches of model input."""
        shard = placement.shard(len(paths), evaluation)
        decoded = DecodedSplit([paths[i] for i in shard], [labels[i] for i in shard], preprocessing, image_size,
                               placement.device, name=name)
        return DeviceBatches(decoded, batch_size, shuffle, batch_transform(preprocessing, augment, placement.device))
