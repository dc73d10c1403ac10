"""Reading checkpoints as untrusted input: tensors and plain values only, never code."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from lightning_transfer.errors import UserError
from lightning_transfer.model import TransferClassifier


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint with ``weights_only=True`` and check it is one of ours.

    A pickle that would import or call anything on load is refused before any of it runs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist; pass --ckpt_path to a .ckpt file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0]
        raise UserError(
            f"refusing to load {str(path)!r}: it holds Python objects that could run code when loaded "
            f"({reason}); only checkpoints written by lightning-transfer are accepted"
        ) from None
    except Exception as err:  # not a zip/pickle at all: say which file and why in one line
        raise UserError(f"{str(path)!r} is not a checkpoint ({type(err).__name__}: {err})") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "backbone" not in hparams or "state_dict" not in checkpoint:
        raise UserError(
            f"{str(path)!r} is not a lightning-transfer checkpoint (no TransferClassifier "
            "hyperparameters or state_dict); pass a .ckpt written by `lightning-transfer fit`"
        )
    checkpoint["hyper_parameters"] = {k: v for k, v in hparams.items() if not k.startswith("_")}
    return checkpoint


def load_model(path: str | Path) -> TransferClassifier:
    """Rebuild the classifier from a checkpoint alone, in eval mode on the CPU.

    The backbone is built without pretrained weights (the checkpoint holds the trained ones), so
    loading works offline.
    """
    checkpoint = read_checkpoint(path)
    model = TransferClassifier(**{**checkpoint["hyper_parameters"], "weights": "none"})
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise UserError(f"{str(path)!r} does not match its own hyperparameters: {err}") from None
    return model.eval()
