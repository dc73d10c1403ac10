"""lightning-transfer: fit, validate, test and predict image classifiers with LightningCLI.

The CLI's only jobs beyond LightningCLI's: tell the model its class names (from the data's train
folder, or from the checkpoint), rebuild a checkpointed model without fetching pretrained weights
again, hand the model to the data module for cached features, log to CSV and TensorBoard in one
run folder, keep a best and a last checkpoint, write the training curves and the test report
there, dispatch the non-training subcommands (``EXTRA_COMMANDS``), and print problems the user can
fix as one line instead of a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch.distributed
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_transfer.callbacks import (
    PredictionCSVWriter,
    ResumeHint,
    TestReport,
    TrainingCurves,
    find_last_checkpoint,
    last_epoch_checkpoint,
)
from lightning_transfer.data import ImageFolderDataModule, class_names_of
from lightning_transfer.data.download import ensure_dataset
from lightning_transfer.data.folders import NO_DATA_ROOT
from lightning_transfer.model import TransferClassifier, read_model_checkpoint
from lightning_transfer.utils.errors import UserError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# Subcommands that are not LightningCLI's: first word -> module with ``main(argv: list[str])``.
EXTRA_COMMANDS = {
    "data": "lightning_transfer.commands.data",
    "visualize": "lightning_transfer.commands.visualize",
    "demo": "lightning_transfer.commands.demo",
    "lr_find": "lightning_transfer.commands.lr_find",
    "export": "lightning_transfer.commands.export",
    "backbones": "lightning_transfer.commands.backbones",
}


# A bad option stops with one line (``main``), not the 100-line usage; no option is taken from a prefix
# of its name (``--model.backbon``), which would silently accept a typo.
PARSER_OPTIONS = {"exit_on_error": False, "allow_abbrev": False}


def default_loggers(save_dir: str) -> list[Logger]:
    """CSV and TensorBoard, both in the same ``lightning_logs/version_N``.

    The TensorBoard logger is given the CSV logger's version; left alone it would pick the next
    free one and split the run over two folders.
    """
    csv_logger = CSVLogger(save_dir)
    return [csv_logger, TensorBoardLogger(save_dir, version=csv_logger.version)]


def check_same_model(
    subcommand: str, ckpt_path: str, checkpoint_model: str, command_model: str, from_config: bool
) -> None:
    """The checkpoint's model settings replace the command's: resuming a ``fit`` of another model is a
    mistake (often ``last`` finding another experiment's run); evaluating one under a config that
    names another model is said in a line."""
    if checkpoint_model == command_model:
        return
    if subcommand == "fit":
        raise UserError(
            f"--ckpt_path {ckpt_path} is a run of {checkpoint_model}, this command trains {command_model}; "
            "resume with that run's config.yaml (in its version_N folder), or pass the last.ckpt of a run "
            "of this model"
        )
    if from_config:
        rank_zero_info(f"{subcommand}: the checkpoint's model, {checkpoint_model} (the config says {command_model})")


class TransferCLI(LightningCLI):
    """LightningCLI wired for TransferClassifier + ImageFolderDataModule."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.backbone", "data.backbone")
        parser.link_arguments("data.image_size", "model.image_size")
        # the best epoch; last.ckpt comes from a second callback (instantiate_trainer)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "epoch{epoch:02d}-val_acc{val_acc:.3f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(PredictionCSVWriter, "predictions")
        parser.add_lightning_class_args(TrainingCurves, "curves")
        parser.add_lightning_class_args(TestReport, "report")

    def _parse_ckpt_path(self) -> None:
        """Take the model's hyperparameters from ``--ckpt_path``, read safely (tensors only).

        Overrides a private LightningCLI method (fenced: the ``lightning`` upper bound in
        pyproject.toml and tests/test_dependency_fences.py): Lightning's own version would hand
        ``image_size`` to the model, whose ``image_size`` is a link target, and print a traceback
        for a bad file. Checkpoints are untrusted input: only a local file (or ``last``) is
        accepted, and it is read with ``weights_only`` before Lightning opens it. The image size is
        the data's option (the model's is linked from it), so it goes there; the backbone is rebuilt
        without pretrained weights because the checkpoint holds them.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path == "last":
            last = find_last_checkpoint(config.checkpoint.dirpath, config.trainer.default_root_dir)
            ckpt_path = config.ckpt_path = str(last)
        elif not Path(ckpt_path).is_file():  # Lightning would load an http(s) URL with weights_only=False
            raise UserError(
                f"--ckpt_path {ckpt_path!r} is not a file; pass a .ckpt written by `lightning-transfer fit`, "
                "or `last` for the newest last.ckpt of the earlier runs"
            )
        hparams = dict(read_model_checkpoint(ckpt_path)["hyper_parameters"])
        image_size = hparams.pop("image_size")
        check_same_model(subcommand, ckpt_path, f"{hparams['backbone']} at {image_size} px",
                         f"{config.model.backbone} at {config.data.image_size} px", bool(config.get("config")))
        hparams["weights"] = "none"
        update = {"model": hparams, "data": {"image_size": image_size}}
        if "weights_only" in config:  # Lightning's own load, explicitly safe (an env var cannot undo it)
            update["weights_only"] = True
        self.config = self.parser.parse_object({subcommand: update}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: lr_find
        if self.subcommand in ("validate", "test", "predict") and not config.get("ckpt_path"):
            raise UserError(
                f"{self.subcommand} needs --ckpt_path CHECKPOINT, a .ckpt written by `lightning-transfer fit` "
                "(or `last` for the newest last.ckpt of the earlier runs); without one the head is untrained"
            )
        if config.checkpoint.save_last:  # Lightning's would write last.ckpt too, at best-epoch steps only
            raise UserError(
                "--checkpoint.save_last: last.ckpt is already written after every epoch; drop the option"
            )
        if config.get("ckpt_path"):  # resuming or evaluating: the checkpoint supplies the weights
            config.model.weights = "none"
            config.model.init_from = None
        if config.model.class_names is None:
            if config.data.root is None:
                raise UserError(NO_DATA_ROOT)
            root = Path(config.data.root).expanduser()
            ensure_dataset(root, config.data.url, config.data.md5)  # class names are needed before prepare_data
            names = class_names_of(root / "train")
            config.model.class_names = names
            config.model.num_classes = len(names)

    def after_instantiate_classes(self) -> None:
        if self.datamodule.cache_features:
            self.datamodule.use_features_of(self.model)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Default loggers, and a second checkpoint callback that writes ``last.ckpt`` after every
        epoch into the best checkpoint's folder (``checkpoint.dirpath`` when given)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = config.get("trainer") or {}
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = default_loggers(trainer_config.get("default_root_dir") or os.getcwd())
        callbacks = trainer_config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        kwargs["callbacks"] = [*callbacks, last_epoch_checkpoint(config["checkpoint"].dirpath)]
        return super().instantiate_trainer(**kwargs)


def leave_process_group() -> None:
    """Under DDP every process raises the same user error. Leaving the process group stops torch's
    store and collective threads before the interpreter exits; left running, C++ may abort with
    "terminate called without an active exception" after the one-line message."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_command(argv: list[str]) -> None:
    """An unknown first word, with the closest command (LightningCLI's own message lists only its four)."""
    if not argv or argv[0].startswith("-") or argv[0] in (*LIGHTNING_COMMANDS, *EXTRA_COMMANDS):
        return
    commands = [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]
    closest = difflib.get_close_matches(argv[0], commands, n=1)
    raise UserError(
        f"unknown command {argv[0]!r}" + (f"; did you mean {closest[0]}?" if closest else "")
        + f" Commands: {', '.join(commands)}"
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point: extra or LightningCLI subcommands, user errors as one line on stderr."""
    argv = sys.argv[1:] if args is None else args
    description = f"{__doc__.splitlines()[0]} Other commands: {', '.join(EXTRA_COMMANDS)} (each has --help)."
    try:
        check_command(argv)
        if argv and argv[0] in EXTRA_COMMANDS:
            importlib.import_module(EXTRA_COMMANDS[argv[0]]).main(argv[1:])
            return
        TransferCLI(
            TransferClassifier,
            ImageFolderDataModule,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [ResumeHint()]},
            parser_kwargs={"description": description, **PARSER_OPTIONS},
            args=args,
        )
    except argparse.ArgumentError as err:  # a bad option or value: the message, without 100 lines of usage
        command = f"lightning-transfer {argv[0]}" if argv and not argv[0].startswith("-") else "lightning-transfer"
        message = " ".join(line.strip() for line in str(err).splitlines())
        sys.stderr.write(f"error: {message} (`{command} --help` lists the options)\n")
        sys.exit(2)
    except UserError as err:
        # one write: with several processes, separate writes of the message and its newline interleave
        sys.stderr.write(f"error: {err}\n")
        leave_process_group()
        sys.exit(1)
    except SIGTERMException:  # Lightning stopped the loops and ResumeHint spoke; exit as killed by SIGTERM
        sys.exit(143)
    except KeyboardInterrupt:  # outside the trainer (during fit Lightning handles it and exits with 1)
        sys.exit("interrupted")


if __name__ == "__main__":
    main()
