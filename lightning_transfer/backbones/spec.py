"""What the project knows about one pretrained conv base: how to build it and how it wants its input.

Like torchvision's weights enums, a spec carries its own preprocessing, so data, demo and
visualizations never hard-code mean/std.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import VGG16_Weights
from torchvision.transforms import InterpolationMode, v2

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone's pretrained weights expect pixels: resize filter and normalization."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: InterpolationMode

    def resize(self, image_size: int) -> v2.Resize:
        """Square resize, like Keras' ``target_size`` (the book squashes, it does not crop)."""
        return v2.Resize((image_size, image_size), interpolation=self.interpolation, antialias=True)

    def to_model_input(self, augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> v2.Compose:
        """uint8 image tensor (or batch) -> float [0, 1] -> ``augment`` (if any) -> normalized.

        ``augment`` runs on float pixels: Kornia's batched augmentation (``data.device_augment``)
        needs them, where torchvision's per-image one runs on uint8 before (``transform``).
        """
        steps = [v2.ToDtype(torch.float32, scale=True), augment, v2.Normalize(self.mean, self.std)]
        return v2.Compose([step for step in steps if step is not None])

    def transform(self, image_size: int, augment: v2.Transform | None = None) -> v2.Compose:
        """PIL image -> model input; ``augment`` (if any) runs on the resized uint8 tensor."""
        steps = [v2.ToImage(), self.resize(image_size), augment, self.to_model_input()]
        return v2.Compose([step for step in steps if step is not None])


def keep_state_dict(source: nn.Module, state: StateDict) -> StateDict:
    """State dicts saved from the upstream model itself need no mapping."""
    return state


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the project needs to know about one pretrained conv base."""

    name: str
    description: str
    build_source: Callable[[], nn.Module]
    """The upstream model (torchvision / timm), randomly initialized."""
    imagenet_state_dict: Callable[[], StateDict]
    """The upstream model's ImageNet weights; raises WeightsUnavailableError when unobtainable."""
    to_blocks: Callable[[nn.Module], nn.Sequential]
    """Upstream model -> conv base as a Sequential of named blocks, bottom to top."""
    to_imagenet_head: Callable[[nn.Module], nn.Module]
    """Upstream model -> module mapping conv-base features to the ImageNet logits."""
    imagenet_categories: Callable[[], list[str]]
    """Class names of those logits."""
    preprocessing: Preprocessing
    default_image_size: int
    adapt_state_dict: Callable[[nn.Module, StateDict], StateDict] = keep_state_dict
    """Accepts the key layouts people have on disk and returns the upstream model's layout."""
    cam_layer: str | None = None
    """Layer Grad-CAM uses by default (the last conv layer's output); None: the last block."""
    imagenet_image_size: int | None = None
    """Input size of the ImageNet classifier, where it is not ``default_image_size`` (VGG16: the book's 150)."""


def imagenet1k_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard order, as torchvision names them."""
    return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])
