"""What ``fit --ckpt_path last`` needs: a ``last.ckpt`` that really is the last epoch, finding it,
and telling the user about it when Ctrl-C or SIGTERM stops a fit.

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only at steps where a
top-k checkpoint is saved, so with ``save_top_k=1`` it is a copy of the *best* epoch and a resume
silently goes back to it. A second, plain ``ModelCheckpoint`` without a monitor keeps exactly one
file, the newest, so its ``last.ckpt`` is always the end of the last finished epoch. And
``ckpt_path="last"`` is looked up in the new run's own (empty) logger folder, so
``find_last_checkpoint`` looks in the earlier runs' folders instead.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_transfer.utils.errors import UserError

LAST = "last"


def last_epoch_checkpoint(dirpath: str | Path | None = None) -> ModelCheckpoint:
    """Writes ``last.ckpt`` after every epoch, replacing the one before, in ``dirpath`` (default:
    the run's ``checkpoints/`` folder, as for every ModelCheckpoint)."""
    return ModelCheckpoint(dirpath=dirpath, filename=LAST, monitor=None, save_top_k=1, enable_version_counter=False)


def find_last_checkpoint(checkpoint_dir: str | None, root_dir: str | None) -> Path:
    """The newest ``last*.ckpt`` in ``checkpoint_dir``, or in any ``ROOT/lightning_logs/*/checkpoints``."""
    if checkpoint_dir:
        pattern = str(Path(checkpoint_dir) / f"{LAST}*.ckpt")
    else:
        pattern = str(Path(root_dir or ".") / "lightning_logs" / "*" / "checkpoints" / f"{LAST}*.ckpt")
    candidates = [Path(path) for path in glob.glob(pattern)]
    if not candidates:
        raise UserError(
            f"--ckpt_path last: nothing matches {pattern}, so no run here has written one; pass a checkpoint "
            "file, or run `lightning-transfer fit` (without --ckpt_path) to make one"
        )
    return max(candidates, key=lambda path: path.stat().st_mtime)


def checkpoint_file(ckpt_path: str) -> str:
    """A command's ``--ckpt_path`` as a file: ``last`` is the newest ``last.ckpt`` of the runs under
    the current folder (said in a line), as for ``fit``, ``test`` and ``predict``."""
    if ckpt_path != LAST:
        return ckpt_path
    found = find_last_checkpoint(None, None)
    print(f"--ckpt_path last: {found}")
    return str(found)


class ResumeHint(Callback):
    """When Ctrl-C or SIGTERM stops ``fit``, says which checkpoint is kept and how to go on from it."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if not interrupted or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        try:
            last = find_last_checkpoint(dirpath, None) if dirpath else None
        except UserError:  # nothing saved yet
            last = None
        if last:
            message = f"interrupted: {last} (end of the last finished epoch) is kept; resume with --ckpt_path last"
        else:
            message = "interrupted before the first epoch ended: there is no checkpoint to resume from"
        print(message, file=sys.stderr)
