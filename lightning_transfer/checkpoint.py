"""Reading checkpoints as untrusted input: tensors and plain values only, never code.

This module knows what a lightning-transfer checkpoint holds, not the model class that rebuilds it
(``lightning_transfer.model.load_model`` does that), so anything may read a checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lightning_transfer.utils.errors import UserError

REQUIRED_HPARAMS = {"backbone", "image_size", "num_classes"}
"""What rebuilding the model needs beyond defaults; every checkpoint ``fit`` writes has them."""


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint with ``weights_only=True`` and check it is one of ours.

    A pickle that would import or call anything on load is refused before any of it runs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist; pass --ckpt_path to a .ckpt file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle asking for code, or no checkpoint at all: say which, in one line
        found = re.search(r"GLOBAL (\S+)", str(err))  # torch names the callable a pickle asks for
        if found:
            raise UserError(
                f"refusing to load {str(path)!r}: it calls {found.group(1)}, which could run code when loaded; "
                "only checkpoints written by lightning-transfer are accepted"
            ) from None
        lines = [line.strip() for line in str(err).splitlines() if line.strip() and "documentation" not in line]
        reason = f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__
        raise UserError(f"{str(path)!r} is not a checkpoint ({reason})") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or not REQUIRED_HPARAMS <= hparams.keys() or "state_dict" not in checkpoint:
        raise UserError(
            f"{str(path)!r} is not a lightning-transfer checkpoint (no TransferClassifier "
            "hyperparameters or state_dict); pass a .ckpt written by `lightning-transfer fit`"
        )
    checkpoint["hyper_parameters"] = {k: v for k, v in hparams.items() if not k.startswith("_")}
    return checkpoint
