"""The on-disk feature cache: one safetensors file per split, named by a digest of everything that
changes the features, written atomically and checked when read."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lightning_transfer.features.extractor import FeatureExtractor
from lightning_transfer.features.sources import LabelledImages
from lightning_transfer.utils.files import write_atomically

FORMAT = "lightning-transfer-features/1"
"""Bump when the file layout or the meaning of a key field changes: old files then simply miss."""


class DamagedCacheError(Exception):
    """A cache file exists but cannot be trusted (truncated, corrupted, or for other inputs)."""


def _checksum(features: torch.Tensor) -> str:
    return hashlib.sha256(features.contiguous().view(torch.uint8).numpy()).hexdigest()


def read_checked(path: Path, key_json: str, count: int) -> torch.Tensor:
    """The features stored at ``path``, or DamagedCacheError if anything about the file is off."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            features = file.get_tensor("features")
    except Exception as err:  # truncated or garbled files fail in many ways; all mean "rebuild"
        raise DamagedCacheError(f"unreadable ({type(err).__name__}: {err})") from None
    if metadata.get("key") != key_json:
        raise DamagedCacheError("its key does not match the requested features")
    if len(features) != count:
        raise DamagedCacheError(f"it holds {len(features)} features for {count} images")
    if metadata.get("sha256") != _checksum(features):
        raise DamagedCacheError("checksum mismatch")
    return features


class FeatureCache:
    """Features of labelled image sets under one backbone: loaded when cached, else extracted and stored.

    A file's name is a digest of everything that changes the features: backbone name, a digest of
    its weights, image size, preprocessing, the extraction dtype, and each image's path, size and
    mtime. Any change is a different file (a miss); the same inputs find the same file (a hit).
    """

    def __init__(self, extractor: FeatureExtractor, image_size: int, cache_dir: Path) -> None:
        self.extractor = extractor
        self.image_size = image_size
        self.cache_dir = cache_dir
        self.weights_digest = extractor.backbone.weights_digest()

    @property
    def backbone_name(self) -> str:
        return self.extractor.backbone.spec.name

    def key(self, images: LabelledImages) -> dict:
        """What the features depend on; ``repr`` of the transform spells out resize and normalization."""
        files = []
        for path, label in zip(images.paths, images.labels):
            stat = Path(path).stat()
            files.append([str(Path(path).resolve()), label, stat.st_size, stat.st_mtime_ns])
        return {
            "format": FORMAT,
            "backbone": self.backbone_name,
            "weights_sha256": self.weights_digest,
            "image_size": self.image_size,
            "preprocessing": repr(images.transform),
            "dtype": self.extractor.dtype,
            "files": files,
        }

    def path(self, split: str, key_json: str) -> Path:
        digest = hashlib.sha256(key_json.encode()).hexdigest()[:24]
        folder = self.backbone_name.replace("/", "--")  # timm/NAME: one folder, as the Hugging Face cache names repos
        return self.cache_dir / "features" / folder / f"{split}-{digest}.safetensors"

    def get(self, split: str, images: LabelledImages) -> torch.Tensor:
        """Backbone features of ``images`` (a split's images, transform without augmentation),
        one row per image, in the extraction's storage dtype."""
        key_json = json.dumps(self.key(images), sort_keys=True)
        path = self.path(split, key_json)
        if path.exists():
            start = time.perf_counter()
            try:
                features = read_checked(path, key_json, len(images))
            except DamagedCacheError as err:
                warnings.warn(f"feature cache {path} is damaged ({err}); extracting the features again")
            else:
                print(f"features [{split}]: cache hit, {len(images)} images loaded from {path} "
                      f"in {time.perf_counter() - start:.2f} s")
                return features
        print(f"features [{split}]: cache miss, extracting {len(images)} images with {self.backbone_name} "
              f"({self.extractor.describe()})")
        start = time.perf_counter()
        features = self.extractor(images, desc=f"features [{split}]")
        seconds = time.perf_counter() - start
        metadata = {"format": FORMAT, "key": key_json, "sha256": _checksum(features)}
        write_atomically(path, lambda temp: save_file({"features": features}, temp, metadata=metadata))
        print(f"features [{split}]: extracted {len(images)} images in {seconds:.1f} s "
              f"({len(images) / seconds:.1f} img/s), cached at {path}")
        return features
