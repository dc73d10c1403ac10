"""Whole batches of decoded uint8 images -> model input, on the device they sit on: the book's
augmentation with per-sample random parameters (Kornia), then the backbone's normalization."""

from __future__ import annotations

import math

import torch
from kornia.augmentation import AugmentationSequential, RandomAffine, RandomHorizontalFlip
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


def batch_transform(preprocessing: Preprocessing, augment: bool, device: torch.device) -> v2.Compose:
    """uint8 (N, 3, S, S) -> model input on the batch's device: the backbone's scaling and
    normalization, with the book's augmentation in between when asked.

    Kornia draws its random parameters on the device it was moved to, from torch's generator for that
    device, so ``seed_everything`` reproduces them and no step waits on the host.
    """
    return preprocessing.to_model_input(book_augmentation().to(device) if augment else None)
