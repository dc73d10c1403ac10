"""Running a frozen conv base over images in the fastest mode that keeps accuracy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lightning_transfer.backbones import Backbone
from lightning_transfer.features.sources import ImageBatches
from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.runtime import eval_mode, memory_format

ExtractionDtype = Literal["auto", "bf16", "fp32"]


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively (CUDA with bf16, or a CPU oneDNN can run bf16 on)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # torch has no public check; this private op is fenced by tests/test_dependency_fences.py,
        # and a torch without it gets fp32 rather than an error
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return torch.backends.mkldnn.is_available() and check is not None and bool(check())
    return False


def resolve_dtype(requested: ExtractionDtype, device: torch.device) -> Literal["bf16", "fp32"]:
    if requested == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return requested


def extraction_threads(num_workers: int) -> int:
    """Intra-op threads that leave a core to each loader worker decoding JPEGs meanwhile: oversubscribed
    OpenMP threads spin-wait on each other (docs/performance.md has the measurement)."""
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
    workers (``extraction_threads``; every thread when images come decoded, ``num_workers=0``).
    ``channels_last`` (default: on CPUs only) is oneDNN's preferred layout; on a GPU, cuDNN's
    channels_last kernels for EfficientNet-Lite0 took seconds to set up for each new batch shape
    (docs/performance.md).
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
        """Features (N, C, H, W) of a dataset yielding ``{"image": ...}`` (read by a DataLoader with
        ``num_workers``) or of ``ImageBatches``, in ``storage_dtype``, on the CPU.

        They stay on the extractor's device until the last batch, so a GPU is not stopped after
        every batch to copy its features out.
        """
        if isinstance(images, ImageBatches):
            batches = images.image_batches(self.batch_size)
        else:
            loader = DataLoader(images, batch_size=self.batch_size, num_workers=self.num_workers)
            batches = (batch["image"] for batch in loader)
        features: torch.Tensor | None = None
        start = 0
        progress = tqdm(total=len(images), desc=desc, unit="img")
        with _extraction_mode(self.backbone, self.threads, self.layout), progress:
            for batch in batches:
                batch_features = self._forward(batch)
                if features is None:
                    shape = (len(images), *batch_features.shape[1:])
                    features = torch.empty(shape, dtype=self.storage_dtype, device=self.device)
                # copied outside inference_mode so the stored tensor is a normal one autograd can use
                features[start : start + len(batch_features)] = batch_features
                start += len(batch_features)
                progress.update(len(batch_features))
        if features is None:
            raise UserError(f"{desc}: no images to extract features from")
        return features.cpu()

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, memory_format=self.layout, non_blocking=True)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16")
        with torch.inference_mode(), autocast:
            return self.backbone(images).to(self.storage_dtype)
