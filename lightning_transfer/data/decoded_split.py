"""A split's images decoded once, resized and held as one uint8 tensor (N, 3, S, S) on a device.

This is the store of the device pipeline (``data.pipeline device``): batches are then drawn from
it by index (``device_batches``) and augmented there (``device_augment``), and fast feature
extraction reads the same tensor. A 2000-image split is 135 MB at 150 px, 300 MB at 224 px.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from PIL.ExifTags import Base as ExifTag
from torch.utils.data import Dataset
from torchvision import io
from torchvision.transforms import v2
from tqdm import tqdm

from lightning_transfer.backbones import Preprocessing
from lightning_transfer.data.images import load_rgb

NVJPEG_CHUNK = 256
"""Files per batched GPU decode: their full-size pixels exist on the GPU together."""


def decoded_bytes(count: int, image_size: int) -> int:
    """Size of ``count`` decoded images at ``image_size`` in the store."""
    return count * 3 * image_size * image_size


def _plain_jpeg(path: Path) -> bool:
    """Whether nvjpeg decodes ``path`` as the model would see it: an RGB or grayscale JPEG
    without an EXIF rotation (nvjpeg applies none). The header alone tells; the rest go through PIL."""
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(ExifTag.Orientation, 1)
            return image.format == "JPEG" and image.mode in ("RGB", "L") and orientation == 1
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False  # load_rgb says what is wrong with it


def _file_bytes(path: Path) -> torch.Tensor:
    return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)


class DecodedSplit(Dataset):
    """Images with labels, decoded on first use into one uint8 tensor on ``device``, kept for the run.

    Decoding: with ``batched_jpeg`` (default: on CUDA), torchvision's batched ``decode_jpeg`` (nvjpeg
    on a GPU) for plain JPEGs; every other file, and every file otherwise, through ``load_rgb`` (PIL,
    EXIF orientation applied) in a thread per core. Resizing: the backbone's square resize
    (``Preprocessing.resize``), the torchvision op the loader workers run, on the device. So on the
    CPU the pixels are those of the workers pipeline exactly, and on a GPU they differ only by the
    decoders' and resize kernels' rounding.

    ``transform`` is that per-image equivalent (resize + normalization): it names the
    preprocessing in feature-cache keys, so features cached by either pipeline serve the other.
    Items (``dataset[i]``) are ``{"image": uint8 (3, S, S), "label", "path"}``.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        preprocessing: Preprocessing,
        image_size: int,
        device: torch.device,
        name: str = "images",
        batched_jpeg: bool | None = None,
    ) -> None:
        self.paths = list(paths)
        self.labels = list(labels)
        self.preprocessing = preprocessing
        self.image_size = image_size
        self.device = torch.device(device)
        self.name = name
        self.batched_jpeg = self.device.type == "cuda" if batched_jpeg is None else batched_jpeg
        self.transform = preprocessing.transform(image_size)
        self._pixels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def pixels(self) -> torch.Tensor:
        """The decoded images, uint8 (N, 3, S, S) on ``device``; decoded at the first access."""
        if self._pixels is None:
            self._pixels = self._decode()
        return self._pixels

    def fields(self) -> dict[str, torch.Tensor]:
        """What batches are drawn from, every tensor on ``device``."""
        return {"image": self.pixels, "label": torch.tensor(self.labels, device=self.device)}

    def __getitem__(self, index: int) -> dict:
        return {"image": self.pixels[index], "label": self.labels[index], "path": str(self.paths[index])}

    def image_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Normalized images in order, ``batch_size`` at a time (fast feature extraction); decodes
        first, so its progress bar comes before the caller's."""
        pixels, to_model_input = self.pixels, self.preprocessing.to_model_input()
        return (to_model_input(pixels[start : start + batch_size]) for start in range(0, len(self), batch_size))

    def _decode(self) -> torch.Tensor:
        size = self.image_size
        # a normal tensor even when Lightning builds loaders under inference mode: the threads filling
        # it run outside that (thread-local) mode, and an inference tensor refuses their writes
        with torch.inference_mode(False):
            pixels = torch.empty((len(self), 3, size, size), dtype=torch.uint8, device=self.device)
        resize = self.preprocessing.resize(size)

        def through_pil(index: int) -> None:
            image = v2.functional.pil_to_tensor(load_rgb(self.paths[index]))
            pixels[index] = resize(image.to(self.device))

        # PIL, file reads and torch's kernels release the GIL: one thread per core works in parallel
        with (
            ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
            tqdm(total=len(self), desc=f"decoding [{self.name}] on {self.device}", unit="img") as progress,
        ):
            left = range(len(self))
            if self.batched_jpeg:
                left = self._decode_jpegs_batched(pixels, resize, pool, progress)
            for _ in pool.map(through_pil, left):
                progress.update()
        return pixels

    def _decode_jpegs_batched(
        self, pixels: torch.Tensor, resize: v2.Resize, pool: ThreadPoolExecutor, progress: tqdm
    ) -> list[int]:
        """Decodes the plain JPEGs on ``device``, chunk by chunk; returns the indices left for PIL."""
        plain = [index for index, ok in enumerate(pool.map(_plain_jpeg, self.paths)) if ok]
        left = sorted(set(range(len(self))) - set(plain))
        for start in range(0, len(plain), NVJPEG_CHUNK):
            chunk = plain[start : start + NVJPEG_CHUNK]
            data = list(pool.map(_file_bytes, (self.paths[index] for index in chunk)))
            try:
                with warnings.catch_warnings():
                    # torchvision 0.29 deprecates its decoders in favour of TorchCodec; nothing for a user to do
                    warnings.simplefilter("ignore", DeprecationWarning)
                    images = io.decode_jpeg(data, mode=io.ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # nvjpeg refused a file of the chunk (it returns nothing then): PIL decodes it
                left.extend(chunk)
                continue
            for index, image in zip(chunk, images):
                pixels[index] = resize(image)
            progress.update(len(chunk))
        return left
