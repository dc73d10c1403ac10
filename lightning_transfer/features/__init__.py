"""Fast feature extraction: run the frozen conv base once per split, keep the features on disk.

Book experiment 1, done so it pays off more than once: a later run that asks for the same features
(same weights, image size, preprocessing, dtype and image files) loads them in a fraction of a
second instead of pushing every image through the conv base again. The head's pool step then runs
once over them (``FeatureSource.pool``), and its dense layers train on
``{"pooled_features", "label"}`` batches (evaluation batches carry ``"path"`` too), which
``TransferClassifier.logits`` accepts.

This package knows models only as a ``FeatureSource`` and image sets only as ``LabelledImages``
(``sources``), so it sits below both the model and the data module.
"""

from lightning_transfer.features.cache import DamagedCacheError, FeatureCache
from lightning_transfer.features.dataset import FeatureDataset, check_frozen, pooled_features
from lightning_transfer.features.extractor import ExtractionDtype, FeatureExtractor, bf16_supported, resolve_dtype
from lightning_transfer.features.sources import FeatureSource, LabelledImages

__all__ = [
    "DamagedCacheError",
    "ExtractionDtype",
    "FeatureCache",
    "FeatureDataset",
    "FeatureExtractor",
    "FeatureSource",
    "LabelledImages",
    "bf16_supported",
    "check_frozen",
    "pooled_features",
    "resolve_dtype",
]
