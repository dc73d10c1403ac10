"""Decoded, resized images that every loader worker shares (``data.keep_decoded``)."""

from __future__ import annotations

import mmap

import torch


class SharedImageStore:
    """Fixed-size uint8 images, filled in on first read, kept for later epochs by all workers.

    The pixels live in one anonymous shared memory mapping, made in the main process before the
    loader forks its workers, so an image one worker decoded is there for every other worker and
    epoch. A per-worker cache would not do: with a shuffled sampler, each image goes to a random
    worker every epoch, so with N workers epoch 2 would find only about 1/N of its images decoded.

    The mapping is not in /dev/shm (Docker's 64 MB default does not limit it) and takes memory only
    as images are filled in. Workers started by spawn or forkserver cannot inherit a mapping;
    unpickled there, each worker starts an empty store of its own (the data module forks its
    workers on Linux for this). Each DDP process has its own store.
    """

    def __init__(self, count: int, height: int, width: int) -> None:
        self.shape = (count, 3, height, width)
        self._map()

    def _map(self) -> None:
        count = self.shape[0]
        image_bytes = self.shape[1] * self.shape[2] * self.shape[3]
        self._buffer = mmap.mmap(-1, count + count * image_bytes)  # anonymous and MAP_SHARED
        self._filled = torch.frombuffer(self._buffer, dtype=torch.bool, count=count)
        self._pixels = torch.frombuffer(self._buffer, dtype=torch.uint8, offset=count).view(self.shape)

    def get(self, index: int) -> torch.Tensor | None:
        """A copy of image ``index`` (so no transform can change the shared one), or None if not stored yet."""
        return self._pixels[index].clone() if self._filled[index] else None

    def put(self, index: int, pixels: torch.Tensor) -> None:
        self._pixels[index] = pixels
        # Flag after pixels. A worker reads an image another worker wrote only in a later epoch, after
        # the batches went through the loader's queues; a duplicate write stores the same bytes.
        self._filled[index] = True

    def filled(self) -> int:
        """How many images are stored."""
        return int(self._filled.sum())

    def __getstate__(self) -> dict:
        return {"shape": self.shape}

    def __setstate__(self, state: dict) -> None:
        self.shape = state["shape"]
        self._map()
