"""PNG figures without pyplot: ``matplotlib.figure.Figure`` renders through Agg and touches no
global backend state, so writing a figure works headless and never changes a notebook's backend."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

DPI = 80  # small files: the figures are for a quick look and the README


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="tight")


def save_figure(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
