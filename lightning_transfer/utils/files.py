"""Where the project keeps its caches, and how it writes files that other runs will read back."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lightning-transfer``, else ``~/.cache/lightning-transfer``: never the source tree."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightning-transfer"


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temp)`` into a temp file beside ``path``, flush it to disk, then rename over ``path``.

    A crash at any point leaves either no file or the complete old one, never a partial file under
    the final name, so a reader never takes half a file for a valid one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temp))
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
