"""Build a dataset folder next to its destination, then move it in: never a half-written ``--out``.

``data prepare`` and ``data download`` both fill ``train/``, ``val/``, ``test/`` in a hidden staging
folder beside ``out`` (same filesystem, so the final moves are renames). An interrupted or failed
run leaves ``out`` as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning_transfer.utils.errors import UserError


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite`` (which replaces only the folders written)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"--out {str(out)!r} is not empty; pass --overwrite to replace its train/ val/ test/ "
            "folders, or choose another folder"
        )


@contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success move each of its entries into ``out``.

    With ``overwrite``, an entry of ``out`` with the same name is removed first, so no files from
    an earlier split are left mixed in; other entries of ``out`` are kept.
    """
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        yield stage
        out.mkdir(exist_ok=True)
        for entry in sorted(stage.iterdir()):
            target = out / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(entry, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
