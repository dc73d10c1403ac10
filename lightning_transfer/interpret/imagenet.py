"""A backbone's own ImageNet classifier, for Grad-CAM against the ImageNet classes (the book's
African elephant) without a checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from lightning_transfer.backbones import Backbone, get_spec, load_weights


class ImageNetClassifier(nn.Module):
    """A backbone's upstream ImageNet model split like ``TransferClassifier``: backbone + head.

    For Grad-CAM against the ImageNet classes (the book's African elephant), no checkpoint. The
    class names and the input size come with the backbone's weights.
    """

    def __init__(self, backbone: str, weights: str = "imagenet") -> None:
        super().__init__()
        spec = get_spec(backbone)
        source = spec.build_source()
        self.backbone = Backbone(spec, spec.to_blocks(source))
        self.head = spec.to_imagenet_head(source)
        self.class_names: list[str] = spec.imagenet_categories()
        self.image_size = spec.imagenet_image_size or spec.default_image_size
        load_weights(spec, source, weights)  # last: a model or names it cannot use stop it before a download

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))
