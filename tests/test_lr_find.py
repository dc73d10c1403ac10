"""``lightning-transfer lr_find``: Lightning's range test on the configured model and data."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.tuner import Tuner
from PIL import Image

from conftest import REPO, run_cli
from lightning_transfer.commands import lr_find
from lightning_transfer.utils.errors import UserError

CONFIG = REPO / "configs" / "efficientnet_lite0_feature_extraction.yaml"


def tiny_options(data: Path, workdir: Path) -> list[str]:
    return ["--config", str(CONFIG), "--data.root", str(data), "--data.image_size", "64", "--model.weights", "none",
            "--data.num_workers", "0", "--data.cache_dir", str(workdir / "cache"),
            "--trainer.enable_progress_bar", "false"]


@pytest.mark.slow
def test_prints_a_finite_suggestion_and_writes_the_plot(tiny_data: Path, tmp_path: Path) -> None:
    """On cached features (extracted by the command, as fit would), 30 steps; nothing else is left behind."""
    result = run_cli("lr_find", *tiny_options(tiny_data, tmp_path), "--lr_find.num_training", "30", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.search(r"suggested learning rate: (\S+)", result.stdout)
    assert found and math.isfinite(float(found[1])) and float(found[1]) > 0, result.stdout
    assert f"add --model.lr {found[1]} to the fit command" in result.stdout
    run_dir = tmp_path / "lightning_logs" / "version_0"
    with Image.open(run_dir / lr_find.PLOT) as image:
        assert image.format == "PNG"
    assert not list(tmp_path.glob(".lr_find_*")), "Lightning's temporary checkpoint was left behind"
    saved = yaml.safe_load((run_dir / "lr_find_config.yaml").read_text())
    assert saved["model"]["lr"] == 3.0e-5  # the config's own, not the suggestion


def test_an_interrupted_search_leaves_no_temporary_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's snapshot of the starting weights is removed however the search ends; a file of the
    same pattern that was there before is not touched."""
    theirs = tmp_path / ".lr_find_earlier.ckpt"
    theirs.write_bytes(b"not ours")

    def interrupted(*args: object, **kwargs: object) -> None:
        Path(".lr_find_1234.ckpt").write_bytes(b"snapshot")  # in the trainer's default_root_dir, the cwd
        raise KeyboardInterrupt

    monkeypatch.setattr(Tuner, "lr_find", interrupted)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        lr_find.main(tiny_options(tiny_data, tmp_path))
    assert sorted(path.name for path in tmp_path.glob(".lr_find_*")) == [theirs.name]


def test_bad_search_ranges_are_refused(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="use 0 < min_lr < max_lr"):
        lr_find.main([*tiny_options(tiny_data, tmp_path), "--lr_find.min_lr", "0.1", "--lr_find.max_lr", "0.01"])
    with pytest.raises(UserError, match="use at least 13 steps"):
        lr_find.main([*tiny_options(tiny_data, tmp_path), "--lr_find.num_training", "12"])


def test_the_suggestion_is_the_steepest_descent_on_the_log_scale() -> None:
    """A flat start with a little noise, then a descent around 1e-3: the pick is in the descent. The
    slope against lr itself (Lightning 2.6's) would pick the noise, where the rates are 1e-7 apart."""
    lrs = torch.logspace(-8, 0, 100, dtype=torch.float64)
    wiggle = 1e-4 * torch.tensor([(-1) ** i for i in range(100)], dtype=torch.float64)
    losses = 0.7 - 0.4 * torch.sigmoid(3 * (lrs.log10() + 3)) + wiggle
    pick = lr_find.steepest_descent({"lr": lrs.tolist(), "loss": losses.tolist()})
    assert 1e-4 < lrs[pick] < 1e-2
    linear = torch.gradient(losses[10:-1], spacing=[lrs[10:-1]])[0].argmin() + 10
    assert lrs[linear] < 1e-6  # what the linear slope would have suggested
    assert lr_find.steepest_descent({"lr": lrs[:11].tolist(), "loss": losses[:11].tolist()}) is None
