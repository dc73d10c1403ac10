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

    def fields(self) -> dict[str, torch.Tensor]:
        """What batches are drawn from (``data.device_batches``), on the features' device."""
        return {"pooled_features": self.pooled, "label": torch.tensor(self.labels, device=self.pooled.device)}

    def subset(self, indices: Sequence[int], device: torch.device) -> FeatureDataset:
        """The rows ``indices`` (a process's shard), moved to ``device``."""
        rows = torch.tensor(indices, dtype=torch.long)
        return FeatureDataset(
            self.pooled[rows].to(device), [self.paths[i] for i in indices], [self.labels[i] for i in indices]
        )

    def eval_batch_size(self, batch_size: int, limit: int | float = 1.0) -> int:
        """As many rows as fit in ``EVAL_BATCH_BYTES``, and at least ``batch_size``; just
        ``batch_size`` when the trainer limits the split's batches (``limit``: ``limit_val_batches
        0.5``; ``overfit_batches`` and ``fast_dev_run`` set it too): limits count batches of
        ``batch_size``, and half of one big batch would be none."""
        if not (isinstance(limit, float) and limit == 1.0):
            return batch_size
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
    split: str,
    images: LabelledImages,
    cache: FeatureCache,
    extracts: bool,
    barrier: Callable[[str], None],
) -> FeatureDataset:
    """A split's cached features (extracted on a miss), pooled once by ``source``.

    Several processes share the cache: the ones with ``extracts`` (one per node) extract and write
    while the others wait at ``barrier``, then read the file.
    """
    features = cache.get(split, images) if extracts else None
    barrier(f"lightning_transfer.features.{split}")
    if features is None:
        features = cache.get(split, images)
    return FeatureDataset(source.pool(features), images.paths, images.labels)
