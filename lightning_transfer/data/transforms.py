"""The book's augmentation (Keras ``ImageDataGenerator``) as torchvision v2 transforms on uint8 tensors."""

from __future__ import annotations

import math

from torchvision.transforms import v2


def augmentation() -> v2.Compose:
    """rotation 40 deg, width/height shift 0.2, shear 0.2 rad, zoom 0.2, horizontal flip."""
    return v2.Compose(
        [
            v2.RandomAffine(degrees=40, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=math.degrees(0.2)),
            v2.RandomHorizontalFlip(),
        ]
    )
