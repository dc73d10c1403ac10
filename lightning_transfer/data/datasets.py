"""Image files as a map-style dataset of dicts, so images, labels and paths stay together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import Dataset

from lightning_transfer.data.images import load_rgb


class ImageFiles(Dataset):
    """Image files with optional labels, each item ``{"image", "path"[, "label"]}``: decoded and
    transformed when read, the workers pipeline's way (``data.pipeline workers``)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | None, transform: Callable) -> None:
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.transform(load_rgb(self.paths[index])), "path": str(self.paths[index])}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item
