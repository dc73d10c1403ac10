"""Image files as a map-style dataset of dicts, so images, labels and paths stay together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lightning_transfer.data.decoded import SharedImageStore
from lightning_transfer.data.images import load_rgb


class ImageFiles(Dataset):
    """Image files with optional labels, each item ``{"image", "path"[, "label"]}``.

    With ``decode_once`` (the resize step of ``transform``), each image is decoded and resized only
    the first time any loader process reads it and kept as a uint8 tensor shared by all of them;
    later epochs run only the rest of ``transform`` (augmentation, normalization) on it. Same pixels
    either way: the resize of an image already at the target size is a no-op.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int] | None,
        transform: Callable,
        decode_once: v2.Resize | None = None,
    ) -> None:
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else None
        self.transform = transform
        self.decode_once = decode_once
        self.decoded = SharedImageStore(len(self.paths), *decode_once.size) if decode_once is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def _pixels(self, index: int) -> Image.Image | torch.Tensor:
        if self.decoded is None:
            return load_rgb(self.paths[index])
        pixels = self.decoded.get(index)
        if pixels is None:
            pixels = self.decode_once(v2.functional.pil_to_tensor(load_rgb(self.paths[index])))
            self.decoded.put(index, pixels)
        return pixels

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.transform(self._pixels(index)), "path": str(self.paths[index])}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item
