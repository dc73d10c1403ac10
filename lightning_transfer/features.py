"""Fast feature extraction: run the frozen conv base once per split, keep the features on disk.

Book experiment 1, done so it pays off more than once: a later run that asks for the same features
(same weights, image size, preprocessing, dtype and image files) loads them in a fraction of a
second instead of pushing every image through the conv base again. The head's pool step then runs
once over them (``TransferClassifier.pool``), and its dense layers train on
``{"pooled_features", "label", "path"}`` batches, which ``TransferClassifier.logits`` accepts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lightning_transfer.backbones import Backbone, eval_mode, memory_format
from lightning_transfer.errors import UserError
from lightning_transfer.files import write_atomically

if TYPE_CHECKING:
    from lightning_transfer.data import ImageFiles

ExtractionDtype = Literal["auto", "bf16", "fp32"]
FORMAT = "lightning-transfer-features/1"
"""Bump when the file layout or the meaning of a key field changes: old files then simply miss."""


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively (CUDA with bf16, or a CPU oneDNN can run bf16 on)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def resolve_dtype(requested: ExtractionDtype, device: torch.device) -> Literal["bf16", "fp32"]:
    if requested == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return requested


def extraction_threads(num_workers: int) -> int:
    """Intra-op threads that leave a core to each loader worker decoding JPEGs meanwhile.

    Oversubscribed OpenMP threads spin-wait on each other: on a busy 2-core machine with 2 workers,
    EfficientNet-Lite0 extraction ran at 8-22 img/s with 2 threads and ~45 img/s with 1.
    """
    return max(1, torch.get_num_threads() - num_workers)


@contextlib.contextmanager
def _extraction_mode(backbone: Backbone, threads: int, layout: torch.memory_format) -> Iterator[None]:
    """eval, ``layout`` and ``threads`` for the duration, then everything is left as it was found."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with eval_mode(backbone), memory_format(backbone, layout):
            yield
    finally:
        torch.set_num_threads(threads_before)


class FeatureExtractor:
    """Runs a frozen conv base over images in the fastest mode that keeps accuracy.

    ``torch.inference_mode`` (no autograd bookkeeping) and, for ``bf16``, autocast; ``fp32`` keeps
    full precision. Runs on the backbone's device, with intra-op threads leaving room for the loader
    workers (``extraction_threads``; on a GPU the main process still copies each batch's features
    on the CPU). ``channels_last`` (default: on CPUs only) is oneDNN's preferred layout; on a GPU,
    extraction waits on the JPEG loader anyway, and cuDNN's channels_last kernels for
    EfficientNet-Lite0 took seconds to set up for each new batch shape (README, GPU check).
    """

    def __init__(
        self,
        backbone: Backbone,
        dtype: ExtractionDtype = "auto",
        batch_size: int = 32,
        num_workers: int = 0,
        channels_last: bool | None = None,
    ) -> None:
        self.backbone = backbone
        self.device = next(backbone.parameters()).device
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.threads = extraction_threads(num_workers)
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.layout = torch.channels_last if channels_last else torch.contiguous_format

    @property
    def layout_name(self) -> str:
        return "channels_last" if self.layout == torch.channels_last else "contiguous"

    def describe(self) -> str:
        return (f"{self.dtype}, {self.layout_name}, {self.device}, threads={self.threads}, "
                f"loader workers={self.num_workers}")

    @property
    def storage_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "bf16" else torch.float32

    def __call__(self, images: Dataset, desc: str = "extracting features") -> torch.Tensor:
        """Features (N, C, H, W) of a dataset yielding ``{"image": ...}``, in ``storage_dtype``."""
        loader = DataLoader(images, batch_size=self.batch_size, num_workers=self.num_workers)
        features: torch.Tensor | None = None
        start = 0
        progress = tqdm(total=len(images), desc=desc, unit="img")
        with _extraction_mode(self.backbone, self.threads, self.layout), progress:
            for batch in loader:
                batch_features = self._forward(batch["image"])
                if features is None:
                    features = torch.empty((len(images), *batch_features.shape[1:]), dtype=self.storage_dtype)
                # copied outside inference_mode so the stored tensor is a normal one autograd can use
                features[start : start + len(batch_features)] = batch_features
                start += len(batch_features)
                progress.update(len(batch_features))
        if features is None:
            raise UserError(f"{desc}: no images to extract features from")
        return features

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, memory_format=self.layout, non_blocking=True)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16")
        with torch.inference_mode(), autocast:
            return self.backbone(images).to(self.storage_dtype).contiguous().cpu()


class FeatureDataset(Dataset):
    """Pooled features (``TransferClassifier.pool``: float32 input of the head's dense layers) with
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

    def key(self, images: ImageFiles) -> dict:
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
        return self.cache_dir / "features" / self.backbone_name / f"{split}-{digest}.safetensors"

    def get(self, split: str, images: ImageFiles) -> torch.Tensor:
        """Backbone features of ``images`` (a split's ``ImageFiles``, transform without augmentation),
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
