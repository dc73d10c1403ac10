"""Where and how modules run outside a Trainer: device choice, eval mode and memory layout for a while."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def default_device() -> torch.device:
    """Where models run outside a Trainer (visualize, demo): the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then the module's previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _layout_of(kernel: torch.Tensor) -> torch.memory_format:
    """channels_last only where it differs from the default (1x1 kernels fit both layouts)."""
    channels_last = kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


@contextmanager
def memory_format(module: nn.Module, layout: torch.memory_format) -> Iterator[None]:
    """The module's conv kernels in ``layout`` for the duration, then each in the layout it had."""
    kernels = [parameter for parameter in module.parameters() if parameter.dim() == 4]
    before = [_layout_of(kernel) for kernel in kernels]
    module.to(memory_format=layout)
    try:
        yield
    finally:
        for kernel, kernel_layout in zip(kernels, before):
            kernel.data = kernel.data.contiguous(memory_format=kernel_layout)
