"""What fast feature extraction needs from the layers above it, as protocols: a model that has a
backbone and a pool step, and a split's labelled images. It imports neither the model nor the data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from lightning_transfer.backbones import Backbone


@runtime_checkable
class FeatureSource(Protocol):
    """What fast feature extraction needs from a model: a frozen backbone and the head's pool step."""

    backbone: Backbone

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features -> float32 input of the head's dense layers (weightless, so run once)."""


class LabelledImages(Protocol):
    """A split's images as a dataset of ``{"image": ...}`` items, with their files, labels and transform."""

    paths: list[Path]
    labels: list[int]
    transform: Callable

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


@runtime_checkable
class ImageBatches(Protocol):
    """Labelled images that hand out their own normalized batches, already on the model's device
    (a split decoded once, ``data.decoded_split``): extraction then needs no loader."""

    def image_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Model input, ``batch_size`` images at a time, in the order of ``paths``."""
