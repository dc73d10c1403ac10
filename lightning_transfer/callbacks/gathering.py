"""Per-image rows from every process, each image once, for the files that rank 0 writes."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from lightning import Trainer

Row = TypeVar("Row", bound=tuple)
"""A tuple whose first item is the image's path."""


def gather_by_path(trainer: Trainer, rows: list[Row]) -> list[Row]:
    """Every process's rows, one per image path, in path order (the order the folders list them).

    With several processes each holds the rows of its own share of the images. The shares of test
    and predict images do not overlap (``data.sharding``); keyed by path all the same, so that a
    share that repeated an image could never count it twice. A collective call: every process must
    make it, and each gets all rows.
    """
    if trainer.world_size > 1:
        shares: list[list[Row] | None] = [None] * trainer.world_size
        torch.distributed.all_gather_object(shares, rows)
        rows = [row for share in shares for row in share]
    once = {row[0]: row for row in rows}
    return sorted(once.values(), key=lambda row: Path(row[0]))
