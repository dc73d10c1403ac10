"""Configs written before the subpackages still run: they name callbacks by their old flat modules,
e.g. ``lightning_transfer.finetuning.StagedFinetuning`` (the README's own examples until commit f669b20)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from lightning_transfer.commands.cli import main
from lightning_transfer.utils.moved_modules import MOVED_MODULES

OLD_CONFIG = """
trainer:
  callbacks:
    - class_path: lightning_transfer.finetuning.StagedFinetuning
      init_args:
        stages: [{epoch: 10, blocks: [block5], lr_factor: 0.5}]
    - class_path: lightning_transfer.gradcam_logger.GradCamLogger
"""


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_an_old_module_hands_out_the_classes_of_the_one_it_moved_to(old: str, monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(FutureWarning, match=f"{old} moved to {MOVED_MODULES[old]}; name the class as"):
        module = importlib.import_module(old)
    new = importlib.import_module(MOVED_MODULES[old])
    classes = [name for name, value in vars(new).items() if isinstance(value, type) and value.__module__ == new.__name__]
    assert classes
    for name in classes:
        assert getattr(module, name) is getattr(new, name)
    with pytest.raises(AttributeError):
        module.NoSuchCallback


def test_a_config_naming_old_class_paths_still_parses(tmp_path: Path, capsys, monkeypatch) -> None:
    for old in MOVED_MODULES:  # imported by an earlier test: the warning comes at the first import
        monkeypatch.delitem(sys.modules, old, raising=False)
    config = tmp_path / "config.yaml"
    config.write_text(OLD_CONFIG)
    with pytest.warns(FutureWarning), pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(config), "--data.root", str(tmp_path), "--print_config"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert "lightning_transfer.finetuning.StagedFinetuning" in printed and "lr_factor: 0.5" in printed
