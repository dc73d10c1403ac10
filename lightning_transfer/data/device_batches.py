"""Batches drawn by index from tensors that already sit on the model's device: no worker processes,
no collation, no host-to-device copy per step.

Lightning takes any iterable with ``__len__`` as a dataloader. It injects a DistributedSampler
only into ``DataLoader`` objects, so under DDP the data module gives each process its own shard
(``sharding.shard_indices``) to hold, and this iterable never sees the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch


class TensorSplit(Protocol):
    """A split held as tensors: ``fields()`` of equal length on one device, and the files they came from."""

    paths: list

    def fields(self) -> dict[str, torch.Tensor]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


class DeviceBatches:
    """``{name: tensor[index]}`` batches of a ``TensorSplit``, in order or shuffled.

    Shuffled orders come from a ``torch.Generator`` on the split's device, seeded once from torch's
    global generator, so ``seed_everything`` reproduces them and every epoch (every ``iter``) gets a
    new one. ``transform`` turns each batch's ``"image"`` into model input (``device_augment``).
    Batches in order carry their files' ``"path"`` (a slice of a list), which the test report and
    the top losses need; shuffled ones carry none, which would cost a device-to-host copy of the
    indices at every step. ``dataset`` is the split itself, as on a DataLoader (``GradCamLogger``
    reads items from it).
    """

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        shuffle: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.dataset = split
        self.batch_size = batch_size
        self.transform = transform
        self._seed = int(torch.randint(0, 2**62, (1,))) if shuffle else None
        self._fields: dict[str, torch.Tensor] | None = None
        self._generator: torch.Generator | None = None

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def _tensors(self) -> dict[str, torch.Tensor]:
        if self._fields is None:
            self._fields = self.dataset.fields()
            if self._seed is not None:
                device = next(iter(self._fields.values())).device
                self._generator = torch.Generator(device=device).manual_seed(self._seed)
        return self._fields

    def __iter__(self) -> Iterator[dict]:
        fields = self._tensors()
        count = len(self.dataset)
        order = None
        if self._generator is not None:
            order = torch.randperm(count, generator=self._generator, device=self._generator.device)
        for start in range(0, count, self.batch_size):
            stop = min(start + self.batch_size, count)
            if order is None:
                yield {**self._batch(fields, slice(start, stop)),
                       "path": [str(path) for path in self.dataset.paths[start:stop]]}
            else:
                yield self._batch(fields, order[start:stop])

    def _batch(self, fields: dict[str, torch.Tensor], index: torch.Tensor | slice) -> dict:
        batch = {name: tensor[index] for name, tensor in fields.items()}
        if self.transform is not None:
            batch["image"] = self.transform(batch["image"])
        return batch
