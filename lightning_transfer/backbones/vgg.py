"""torchvision VGG16, the book's backbone: ``block1`` .. ``block5`` with Keras' layer names."""

from __future__ import annotations

import functools
from collections import OrderedDict

from torch import nn
from torchvision.models import VGG16_Weights, vgg16
from torchvision.transforms import InterpolationMode

from lightning_transfer.backbones.spec import BackboneSpec, Preprocessing, StateDict, imagenet1k_categories
from lightning_transfer.backbones.weights import torchvision_state_dict


def _source() -> nn.Module:
    return vgg16(weights=None)


def _adapt(source: nn.Module, state: StateDict) -> StateDict:
    """Accepts full torchvision VGG16 keys or ``features``-only keys (``0.weight``, ...)."""
    if not any(key.startswith("features.") for key in state):
        state = {f"features.{key}": value for key, value in state.items()}
    kept_classifier = {k: v for k, v in source.state_dict().items() if k.startswith("classifier.")}
    return {**kept_classifier, **state}


def _blocks(source: nn.Module) -> nn.Sequential:
    """torchvision's flat ``features`` -> block1..block5, each conv fused with its ReLU.

    Keras' ``block1_conv1`` outputs post-activation, so each ``convN`` here is Conv2d + ReLU; the
    ReLUs are made out-of-place so hooks (activations, Grad-CAM) see the values they expect.
    """
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    current: OrderedDict[str, nn.Module] = OrderedDict()
    layers = list(source.features)
    index = 0
    while index < len(layers):
        layer = layers[index]
        if isinstance(layer, nn.Conv2d):
            current[f"conv{len(current) + 1}"] = nn.Sequential(layer, nn.ReLU(inplace=False))
            index += 2
        else:
            current["pool"] = layer
            blocks[f"block{len(blocks) + 1}"] = nn.Sequential(current)
            current = OrderedDict()
            index += 1
    return nn.Sequential(blocks)


def _imagenet_head(source: nn.Module) -> nn.Module:
    return nn.Sequential(source.avgpool, nn.Flatten(1), source.classifier)


VGG16 = BackboneSpec(
    name="vgg16",
    description="torchvision VGG16 (full model or its `features`)",
    build_source=_source,
    imagenet_state_dict=functools.partial(torchvision_state_dict, VGG16_Weights.IMAGENET1K_V1, "VGG16"),
    adapt_state_dict=_adapt,
    to_blocks=_blocks,
    to_imagenet_head=_imagenet_head,
    imagenet_categories=imagenet1k_categories,
    preprocessing=Preprocessing(
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation=InterpolationMode.BILINEAR
    ),
    default_image_size=150,
    imagenet_image_size=224,
    cam_layer="block5_conv3",
)
