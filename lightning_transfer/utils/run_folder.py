"""The run's folder: where every output of a Lightning run goes, never the current directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning import Trainer


def run_folder(trainer: Trainer) -> Path:
    """``trainer.log_dir`` (the first logger's version folder), or ``default_root_dir`` when there is
    no logger or the logger has no folder (``fast_dev_run`` swaps the loggers for a dummy one).

    A collective call under DDP (``log_dir`` broadcasts rank 0's folder): every process must make
    it, at the same point, or the others wait forever.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)
