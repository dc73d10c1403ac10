"""The benchmark scripts start from a fresh clone: each prints its usage, and the GPU script refuses
a machine without a GPU in one line instead of failing step by step."""

from __future__ import annotations

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
