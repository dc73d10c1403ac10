"""``lightning-transfer lr_find --config ...``: Lightning's learning-rate range test on the model and
data that ``fit`` builds from the same config (cached features too), the suggested learning rate, and
the loss-vs-lr plot in the run's folder.

The search trains from the configured starting weights for ``--lr_find.num_training`` steps at
exponentially growing learning rates, then Lightning restores the weights from a temporary
checkpoint; nothing else is changed, the config included. The suggestion is where the smoothed loss
falls fastest against log10(lr) (:func:`steepest_descent`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.tuner import Tuner

from lightning_transfer.commands.cli import PARSER_OPTIONS, TransferCLI
from lightning_transfer.data import ImageFolderDataModule
from lightning_transfer.model import TransferClassifier
from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.plotting import new_figure, save_figure
from lightning_transfer.utils.run_folder import run_folder

PLOT = "lr_find.png"
TEMPORARY_CHECKPOINTS = ".lr_find_*.ckpt"
"""Lightning's snapshot of the starting weights, in ``trainer.default_root_dir``."""
SKIP_BEGIN, SKIP_END = 10, 1
"""Rates left out of the suggestion at either end, as Lightning's ``suggestion`` does."""
MIN_STEPS = SKIP_BEGIN + SKIP_END + 2


class LrFindCLI(TransferCLI):
    """The fit command's parser and classes (``run=False``), plus the search's own options."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--lr_find.min_lr", type=float, default=1e-8, help="first learning rate tried")
        parser.add_argument("--lr_find.max_lr", type=float, default=1.0, help="last learning rate tried")
        parser.add_argument("--lr_find.num_training", type=int, default=100, help="steps, one learning rate each")

    def before_instantiate_classes(self) -> None:
        """Enough epochs for every step of the search, and no validation: only the training loss counts."""
        super().before_instantiate_classes()
        options, trainer = self.config.lr_find, self.config.trainer
        if trainer.fast_dev_run:  # Lightning skips the search then
            raise UserError("lr_find does not run with --trainer.fast_dev_run; drop that option")
        if not 0 < options.min_lr < options.max_lr:
            raise UserError(f"--lr_find.min_lr {options.min_lr} and --lr_find.max_lr {options.max_lr}: "
                            "use 0 < min_lr < max_lr")
        if options.num_training < MIN_STEPS:
            raise UserError(f"--lr_find.num_training {options.num_training}: use at least {MIN_STEPS} steps (the "
                            f"first {SKIP_BEGIN} and the last {SKIP_END} do not count for the suggestion)")
        trainer.max_epochs = max(trainer.max_epochs or 1, options.num_training)  # an epoch is at least a step
        trainer.check_val_every_n_epoch = trainer.max_epochs + 1


def steepest_descent(results: dict[str, list[float]]) -> int | None:
    """Index of the suggested rate: Lightning's rule (where the smoothed loss falls fastest, the first 10
    and the last point skipped), but with the slope taken against log10(lr), the scale the rates are
    spaced on. Lightning 2.6 takes it against lr itself, where the smallest rates are packed so densely
    that noise on the flat start wins (Lightning issue #21141)."""
    lrs = torch.tensor(results["lr"], dtype=torch.float64)
    losses = torch.tensor(results["loss"], dtype=torch.float64)
    kept = torch.arange(len(lrs))[SKIP_BEGIN : len(lrs) - SKIP_END]
    kept = kept[torch.isfinite(losses[kept])]
    if len(kept) < 2:
        return None
    slopes = torch.gradient(losses[kept], spacing=[lrs[kept].log10()])[0]
    return int(kept[slopes.argmin()])


def plot_search(finder: Any, pick: int, path: Path) -> Path:
    """Loss against learning rate (log scale) with the suggestion marked: the plot of ``Tuner.lr_find``'s
    result, drawn on our own axes, so no pyplot figure is created."""
    figure = new_figure(6, 4)
    axis = figure.subplots()
    finder.plot(suggest=False, ax=axis)
    lr, loss = finder.results["lr"][pick], finder.results["loss"][pick]
    axis.plot(lr, loss, marker="o", markersize=10, color="red")
    axis.set_title(f"Learning-rate range test: suggested lr {lr:.2g}")
    return save_figure(figure, path)


def main(argv: list[str]) -> None:
    with warnings.catch_warnings():  # argv is the command line after "lr_find", not a second one
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)
        cli = LrFindCLI(
            TransferClassifier,
            ImageFolderDataModule,
            run=False,
            args=argv,
            save_config_kwargs={"overwrite": True, "config_filename": "lr_find_config.yaml"},
            parser_kwargs={
                "prog": "lightning-transfer lr_find", "description": __doc__.splitlines()[0], **PARSER_OPTIONS
            },
        )
    options, trainer = cli.config.lr_find, cli.trainer
    root = Path(trainer.default_root_dir)
    before = set(root.glob(TEMPORARY_CHECKPOINTS))
    try:
        finder = Tuner(trainer).lr_find(
            cli.model, datamodule=cli.datamodule, min_lr=options.min_lr, max_lr=options.max_lr,
            num_training=options.num_training, update_attr=False,
        )
    finally:  # an interrupted search can leave Lightning's snapshot behind (Lightning issue #13856)
        if trainer.is_global_zero:
            for leftover in set(root.glob(TEMPORARY_CHECKPOINTS)) - before:
                leftover.unlink(missing_ok=True)
    folder = run_folder(trainer)  # collective: every process asks
    if not trainer.is_global_zero:
        return
    pick = steepest_descent(finder.results)
    if pick is None:
        raise UserError(f"the search ran {len(finder.results['lr'])} steps before the loss ran away, too few for a "
                        "suggestion; lower --lr_find.max_lr or raise --lr_find.num_training")
    suggestion = finder.results["lr"][pick]
    path = plot_search(finder, pick, folder / PLOT)
    print(f"suggested learning rate: {suggestion:.3g} (where the loss falls fastest, {len(finder.results['lr'])} "
          f"rates from {options.min_lr:g} to {options.max_lr:g})")
    print(f"use it: add --model.lr {suggestion:.3g} to the fit command, or set model.lr in the config")
    print(f"wrote the loss-vs-lr plot to {path}")
