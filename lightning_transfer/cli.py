"""``lightning-transfer``: LightningCLI for fit/validate/test/predict.

The CLI's only jobs beyond LightningCLI's: tell the model its class names (from the data's train
folder, or from the checkpoint), rebuild a checkpointed model without fetching pretrained weights
again, and print problems the user can fix as one line instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_transfer.checkpoint import read_checkpoint
from lightning_transfer.data import ImageFolderDataModule, class_names_of
from lightning_transfer.errors import UserError
from lightning_transfer.model import TransferClassifier
from lightning_transfer.predictions import PredictionCSVWriter


EXTRA_COMMANDS = {"visualize": "lightning_transfer.visualize", "demo": "lightning_transfer.demo"}
"""Subcommands outside LightningCLI: first word -> module exposing ``main(argv)``."""


class TransferCLI(LightningCLI):
    """LightningCLI wired for TransferClassifier + ImageFolderDataModule."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.backbone", "data.backbone")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:02d}-val_acc{val_acc:.3f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(PredictionCSVWriter, "predictions")

    def _parse_ckpt_path(self) -> None:
        """Take the model's hyperparameters from ``--ckpt_path``, read safely (tensors only).

        The image size is the data's option (the model's is linked from it), so it goes there; the
        backbone is rebuilt without pretrained weights because the checkpoint holds them.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = dict(read_checkpoint(ckpt_path)["hyper_parameters"])
        image_size = hparams.pop("image_size")
        hparams["weights"] = "none"
        update = {subcommand: {"model": hparams, "data": {"image_size": image_size}}}
        self.config = self.parser.parse_object(update, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if config.get("ckpt_path"):  # resuming or evaluating: the checkpoint supplies the weights
            config.model.weights = "none"
        if config.model.class_names is None:
            if config.data.root is None:
                raise UserError("no data root given; pass --data.root DIR (a folder with train/ and val/)")
            names = class_names_of(Path(config.data.root).expanduser() / "train")
            config.model.class_names = names
            config.model.num_classes = len(names)


def main(args: list[str] | None = None) -> None:
    """Console entry point: LightningCLI subcommands, user errors as one line on stderr."""
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            importlib.import_module(EXTRA_COMMANDS[argv[0]]).main(argv[1:])
            return
        TransferCLI(
            TransferClassifier,
            ImageFolderDataModule,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": __doc__.splitlines()[0]},
            args=args,
        )
    except UserError as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit("interrupted: the last checkpoint (last.ckpt) is kept; resume with --ckpt_path last")


if __name__ == "__main__":
    main()
