"""Class paths of the flat layout, as configs written before the subpackages name them.

A config saved by an earlier run (``lightning_logs/version_N/config.yaml``) or copied from an
earlier README names callbacks by their old module, e.g.
``lightning_transfer.finetuning.StagedFinetuning``. Importing such a module gives the one it moved
to, with a warning naming the path to write instead, so that config still runs.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED_MODULES = {
    "lightning_transfer.finetuning": "lightning_transfer.callbacks.finetuning",
    "lightning_transfer.gradcam_logger": "lightning_transfer.callbacks.gradcam_logger",
    "lightning_transfer.report": "lightning_transfer.callbacks.test_report",
    "lightning_transfer.predictions": "lightning_transfer.callbacks.predictions",
    "lightning_transfer.curves": "lightning_transfer.callbacks.curves",
    "lightning_transfer.resume": "lightning_transfer.callbacks.checkpointing",
}
"""Old module -> where its config-nameable classes (the callbacks) live now."""


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an import of an old module with a stand-in that hands out the new module's names."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED_MODULES else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        """Python's default module object."""

    def exec_module(self, module: ModuleType) -> None:
        new = MOVED_MODULES[module.__name__]
        warnings.warn(
            f"{module.__name__} moved to {new}; name the class as lightning_transfer.callbacks.NAME instead",
            FutureWarning,
            stacklevel=2,
        )
        module.__getattr__ = functools.partial(getattr, importlib.import_module(new))  # PEP 562


def install() -> None:
    """Let old class paths import (once per process)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
