"""A backbone's own ImageNet classifier, for Grad-CAM against the 1000 ImageNet classes (the book's
African elephant) without a checkpoint."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import VGG16_Weights

from lightning_transfer.backbones import Backbone, get_spec, load_source

IMAGENET_IMAGE_SIZE = 224
"""The input size the upstream ImageNet classifiers were trained at."""


class ImageNetClassifier(nn.Module):
    """A backbone's upstream ImageNet model split like ``TransferClassifier``: backbone + head.

    For Grad-CAM against the 1000 ImageNet classes (the book's African elephant), no checkpoint.
    """

    def __init__(self, backbone: str, weights: str = "imagenet") -> None:
        super().__init__()
        spec = get_spec(backbone)
        source = load_source(spec, weights)
        self.backbone = Backbone(spec, spec.to_blocks(source))
        self.head = spec.to_imagenet_head(source)
        # Both registry backbones use the standard ImageNet-1k class order.
        self.class_names: list[str] = list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])
        self.image_size = IMAGENET_IMAGE_SIZE

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))
