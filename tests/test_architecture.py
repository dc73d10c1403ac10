"""The architecture in pyproject.toml's import-linter contracts holds, and the contracts catch what they
are there to catch: an upward import, even one hidden inside a function."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts, on the package found under ``package_parent``."""
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=package_parent, env={"PYTHONPATH": str(package_parent), "PATH": ""}, capture_output=True, text=True,
        timeout=120,
    )


def test_the_package_keeps_its_import_contracts() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_a_lazy_upward_import_breaks_the_contracts(tmp_path: Path) -> None:
    """checkpoint.py once imported the model inside a function, to dodge a cycle: that is refused."""
    shutil.copytree(REPO / "lightning_transfer", tmp_path / "lightning_transfer")
    checkpoint = tmp_path / "lightning_transfer" / "checkpoint.py"
    checkpoint.write_text(
        checkpoint.read_text()
        + "\n\ndef model_class():\n    from lightning_transfer.model import TransferClassifier\n\n"
        + "    return TransferClassifier\n"
    )
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "lightning_transfer.checkpoint -> lightning_transfer.model" in result.stdout
    assert "0 kept, 2 broken" in result.stdout
