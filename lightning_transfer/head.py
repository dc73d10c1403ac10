"""The dense head on top of the conv base, with named parts: ``pool`` then ``classifier``.

``pool`` has no weights (flatten, or a global average), so fast feature extraction runs it once
over the cached features and trains only ``classifier``; naming the parts says which is which.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import nn

Pool = Literal["flatten", "avg"]
_POSITIONAL_KEY = re.compile(r"^head\.(\d+)\.")


class Head(nn.Module):
    """The book's head: pool -> Dense(hidden, relu) -> Dropout -> Dense(classes).

    ``pool="flatten"`` flattens the feature map as the book does; ``pool="avg"`` averages it first,
    which keeps the head small for big maps.
    """

    def __init__(
        self, feature_shape: tuple[int, int, int], num_classes: int, hidden: int, dropout: float, pool: Pool
    ) -> None:
        super().__init__()
        channels, height, width = feature_shape
        if pool == "flatten":
            self.pool: nn.Module = nn.Flatten(1)
            in_features = channels * height * width
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
            in_features = channels
        self.classifier = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(features))


def upgrade_head_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State dicts written while the head was one ``nn.Sequential`` (``head.1.weight``, ``head.4.bias``)
    -> named parts (``head.classifier.0.weight``, ``head.classifier.3.bias``); others pass unchanged.

    The old ``head.0`` was the weightless pool, so every old index moves down by one.
    """
    return {
        _POSITIONAL_KEY.sub(lambda match: f"head.classifier.{int(match[1]) - 1}.", key): value
        for key, value in state_dict.items()
    }
