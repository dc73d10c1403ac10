"""Whole batches of decoded uint8 images -> model input, on the device they sit on: the book's
augmentation with per-sample random parameters (Kornia), then the backbone's normalization."""

from __future__ import annotations

import math

import torch
from kornia.augmentation import AugmentationSequential, RandomAffine, RandomHorizontalFlip
from torch import nn
from torchvision.transforms import v2

from lightning_transfer.backbones import Preprocessing


def book_augmentation() -> AugmentationSequential:
    """rotation 40 deg, width/height shift 0.2, shear 0.2 rad, zoom 0.2, horizontal flip, drawn per image.

    The same ranges as ``transforms.augmentation`` (torchvision, one image at a time in the loader
    workers). Kornia's ``shear`` is in degrees like torchvision's, and ``p=1`` because Kornia's
    ``RandomAffine`` would otherwise skip half the images (Keras and torchvision always apply it).
    Bilinear resampling on float pixels, as Keras' ``ImageDataGenerator`` does; torchvision's
    ``RandomAffine`` on uint8 defaults to nearest. Both fill uncovered corners with black.
    """
    return AugmentationSequential(
        RandomAffine(degrees=40, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=math.degrees(0.2), p=1.0),
        RandomHorizontalFlip(p=0.5),
        same_on_batch=False,
    )


class BatchTransform(nn.Module):
    """uint8 (N, 3, S, S) -> float32 [0, 1] -> augmented (if asked) -> normalized, on the batch's device.

    The same scaling and normalization as ``Preprocessing.to_model_input`` (torchvision's functional
    ops, which take batches); augmentation runs between the two because Kornia needs float pixels.
    Kornia draws its random parameters on the device it was moved to, from torch's generator for that
    device, so ``seed_everything`` reproduces them and no step waits on the host.
    """

    def __init__(self, preprocessing: Preprocessing, augment: bool, device: torch.device) -> None:
        super().__init__()
        self.mean, self.std = list(preprocessing.mean), list(preprocessing.std)
        self.augment = book_augmentation().to(device) if augment else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = v2.functional.to_dtype(pixels, torch.float32, scale=True)
        if self.augment is not None:
            images = self.augment(images)
        return v2.functional.normalize(images, self.mean, self.std)
