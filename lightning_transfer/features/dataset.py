"""Pooled features in memory as a dataset, and turning a split's images into one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from lightning_transfer.features.cache import FeatureCache
from lightning_transfer.features.sources import FeatureSource, LabelledImages
from lightning_transfer.utils.errors import UserError

EVAL_BATCH_BYTES = 256 * 2**20
"""Evaluation batches over cached features: in memory and without gradients, so larger batches give
the same loss and accuracy in far fewer of Lightning's steps. Sized in bytes, so big flattened
feature maps do not make a batch of gigabytes."""


class FeatureDataset(Dataset):
    """Pooled features (``FeatureSource.pool``: float32 input of the head's dense layers) with
    their labels and image paths, in memory."""

    def __init__(self, pooled: torch.Tensor, paths: Sequence[Path], labels: Sequence[int]) -> None:
        if len(pooled) != len(paths) or len(paths) != len(labels):
            raise ValueError(f"{len(pooled)} features for {len(paths)} paths and {len(labels)} labels")
        self.pooled = pooled
        self.paths = list(paths)
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"pooled_features": self.pooled[index], "label": self.labels[index], "path": str(self.paths[index])}

    def eval_batch_size(self, batch_size: int) -> int:
        """As many rows as fit in ``EVAL_BATCH_BYTES``, and at least ``batch_size``."""
        row_bytes = self.pooled[0].nelement() * self.pooled.element_size()
        return max(batch_size, EVAL_BATCH_BYTES // row_bytes)


def check_frozen(source: FeatureSource) -> None:
    """Cached features are only valid while the backbone that made them does not train."""
    if any(parameter.requires_grad for parameter in source.backbone.parameters()):
        raise UserError(
            "data.cache_features true needs a frozen backbone (its features must not change while "
            "the head trains); pass --model.freeze_backbone true or --data.cache_features false"
        )


def pooled_features(
    source: FeatureSource,
    splits: dict[str, LabelledImages],
    cache: FeatureCache,
    extracts: bool,
    barrier: Callable[[str], None],
) -> dict[str, FeatureDataset]:
    """Each split's cached features (extracted on a miss), pooled once by ``source``.

    Several processes share the cache: the ones with ``extracts`` (one per node) extract and write
    while the others wait at ``barrier``, then read the file.
    """
    datasets = {}
    for split, images in splits.items():
        features = cache.get(split, images) if extracts else None
        barrier(f"lightning_transfer.features.{split}")
        if features is None:
            features = cache.get(split, images)
        datasets[split] = FeatureDataset(source.pool(features), images.paths, images.labels)
    return datasets
