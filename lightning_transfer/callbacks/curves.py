"""Training curves like the book's figures: train vs val accuracy and loss per epoch, as one PNG.

The callback records the epoch metrics the model logs (``train_acc``, ``val_acc``, ``train_loss``,
``val_loss``) itself, so the figure does not depend on which loggers are configured. It plots the
epochs of its own run (a run resumed with ``--ckpt_path`` starts its figure at the resumed epoch).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from matplotlib.ticker import MaxNLocator

from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.plotting import new_figure, save_figure
from lightning_transfer.utils.run_folder import run_folder

PANELS = (("acc", "accuracy"), ("loss", "loss"))
METRICS = tuple(f"{stage}_{name}" for name, _ in PANELS for stage in ("train", "val"))


def smooth(values: Sequence[float], factor: float) -> list[float]:
    """The book's exponential moving average: ``s = previous * factor + value * (1 - factor)``.

    NaN (an epoch without that metric) is passed through without resetting the average.
    """
    smoothed: list[float] = []
    previous = math.nan
    for value in values:
        if math.isnan(value):
            smoothed.append(value)
            continue
        previous = value if math.isnan(previous) else previous * factor + value * (1 - factor)
        smoothed.append(previous)
    return smoothed


def plot_curves(history: Sequence[dict[str, float]], path: Path, smoothing: float = 0.0) -> Path:
    """Draw accuracy and loss panels (train as dots, val as a line, as in the book) to ``path``."""
    epochs = [int(row["epoch"]) + 1 for row in history]
    figure = new_figure(10, 4)
    axes = figure.subplots(1, len(PANELS))
    for axis, (name, title) in zip(axes, PANELS):
        for stage, style in (("train", "bo"), ("val", "b-")):
            values = [row.get(f"{stage}_{name}", math.nan) for row in history]
            if smoothing > 0:
                values = smooth(values, smoothing)
            axis.plot(epochs, values, style, label=f"{'Training' if stage == 'train' else 'Validation'} {title}")
        suffix = f" (smoothed, EMA {smoothing:g})" if smoothing > 0 else ""
        axis.set_title(f"Training and validation {title}{suffix}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend()
    return save_figure(figure, path)


class TrainingCurves(Callback):
    """Writes ``training_curves.png`` to the run's log directory during and at the end of ``fit``.

    Drawing the figure takes a few tenths of a second, about as long as a whole head epoch on
    cached features, so during training it is redrawn at most every ``every_seconds``; the final
    figure is always written when training ends, is stopped, or fails.

    Args:
        smoothing: exponential-moving-average factor for the curves (the book uses 0.8); 0 plots
            the raw per-epoch values.
        filename: file name inside the run's log directory.
        every_seconds: least time between two redraws while training; 0 redraws after every epoch.
    """

    def __init__(self, smoothing: float = 0.0, filename: str = "training_curves.png", every_seconds: float = 30.0) -> None:
        if not 0 <= smoothing < 1:
            raise UserError(f"--curves.smoothing={smoothing}: use a factor in [0, 1), e.g. 0.8 as in the book")
        if every_seconds < 0:
            raise UserError(f"--curves.every_seconds={every_seconds}: use a number of seconds >= 0")
        self.smoothing = smoothing
        self.filename = filename
        self.every_seconds = every_seconds
        self.history: list[dict[str, float]] = []
        self._path: Path | None = None
        self._drawn_rows = 0
        self._drawn_at = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # on every process: run_folder is a collective call, so it is not made in on_exception
        self._path = run_folder(trainer) / self.filename
        self._drawn_at = time.monotonic()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": float(trainer.current_epoch)}
        row.update({key: float(trainer.callback_metrics[key]) for key in METRICS if key in trainer.callback_metrics})
        self.history.append(row)
        if time.monotonic() - self._drawn_at >= self.every_seconds:
            self._draw(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        try:
            self._draw(trainer)
        except Exception as err:  # the fit's own exception is the one to report
            warnings.warn(f"could not draw the training curves: {err}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero and self.history and self._path is not None:
            print(f"wrote training curves to {self._path}")

    def _draw(self, trainer: Trainer) -> None:
        """Redraw the figure if epochs were added since the last time (on the global-zero process)."""
        if trainer.is_global_zero and self._path is not None and len(self.history) > self._drawn_rows:
            plot_curves(self.history, self._path, self.smoothing)
            self._drawn_rows = len(self.history)
        self._drawn_at = time.monotonic()
