"""``python demo/app.py --ckpt_path model.ckpt``: the demo as a script, and a Hugging Face Space app.

A thin entry point: the app lives in ``lightning_transfer.demo`` (``lightning-transfer demo`` runs
the same code). Run without ``--ckpt_path`` (as a Space does), the checkpoint is
``$LIGHTNING_TRANSFER_CKPT`` or else ``model.ckpt`` next to this file, and the examples are the
``examples/`` folder next to it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning_transfer.commands.cli import main
from lightning_transfer.commands.demo import CKPT_ENV

HERE = Path(__file__).resolve().parent


def with_defaults(argv: list[str]) -> list[str]:
    """Prepend this folder's checkpoint and examples (later options win in argparse)."""
    defaults = ["--examples", str(HERE / "examples")] if (HERE / "examples").is_dir() else []
    if not os.environ.get(CKPT_ENV):
        defaults += ["--ckpt_path", str(HERE / "model.ckpt")]
    return ["demo", *defaults, *argv]


if __name__ == "__main__":
    main(with_defaults(sys.argv[1:]))
