"""The benchmark scripts start from a fresh clone: each prints its usage, and the GPU script refuses
a machine without a GPU in one line instead of failing step by step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

BENCHMARKS = REPO / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(path.name for path in BENCHMARKS.glob("*.py")))
def test_benchmark_prints_its_usage(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")


@pytest.mark.slow
def test_gpu_check_prints_its_usage() -> None:
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "DATA_ROOT" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_gpu_check_without_a_gpu_is_refused_in_one_line() -> None:
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no CUDA GPU" in result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_gpu_check_driver_runs_every_row_as_a_dry_run_on_the_cpu(tiny_data, tmp_path) -> None:
    """``--device cpu --quick`` runs each of the GPU check's rows at tiny sizes and prints the table."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), str(tiny_data), "--device", "cpu", "--quick",
         "--book-images", "8"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("| row | value | note |"):]
    for row in ("ceiling: VGG16 32 px forward", "ceiling: VGG16 32 px training step", "CPU DataLoader",
                "vgg16 32 px extraction", "efficientnet_lite0 32 px extraction", "experiment 2 training",
                "fine-tuning training", "book recipe as one command (8 images x 1 epochs, batch 4) | "):
        assert row in table, row
    assert "FAILED" not in table
