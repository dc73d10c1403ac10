"""Backbone names -> specs, and building from them.

Three name forms: the built-ins (``vgg16``, ``efficientnet_lite0``, written out by hand: Keras'
layer names, offline weights), any torchvision classification model (``resnet50``) and any timm
model as ``timm/NAME`` (``timm/convnext_atto``, ``timm/resnet50.a1_in1k``).
"""

from __future__ import annotations

import difflib
import functools

import timm
from torch import nn

from lightning_transfer.backbones.backbone import Backbone
from lightning_transfer.backbones.efficientnet import EFFICIENTNET_LITE0
from lightning_transfer.backbones.generic import TIMM_PREFIX, timm_spec, torchvision_names, torchvision_spec
from lightning_transfer.backbones.spec import BackboneSpec
from lightning_transfer.backbones.vgg import VGG16
from lightning_transfer.backbones.weights import load_state_dict_file
from lightning_transfer.utils.errors import UserError

_BUILT_IN: dict[str, BackboneSpec] = {spec.name: spec for spec in (VGG16, EFFICIENTNET_LITE0)}


def available_backbones() -> list[str]:
    """The built-in backbones; ``backbone_names`` lists every name that works."""
    return sorted(_BUILT_IN)


def built_in_specs() -> list[BackboneSpec]:
    return [_BUILT_IN[name] for name in available_backbones()]


def backbone_names() -> list[str]:
    """Every accepted name: the built-ins, torchvision's classification models, ``timm/`` + timm's."""
    timm_names = [TIMM_PREFIX + name for name in timm.list_models()]
    return [*available_backbones(), *(name for name in torchvision_names() if name not in _BUILT_IN), *timm_names]


@functools.cache
def get_spec(name: str) -> BackboneSpec:
    if name in _BUILT_IN:
        return _BUILT_IN[name]
    if name.startswith(TIMM_PREFIX) and timm.is_model(name.removeprefix(TIMM_PREFIX)):
        return timm_spec(name.removeprefix(TIMM_PREFIX))
    if name in torchvision_names():
        return torchvision_spec(name)
    close = difflib.get_close_matches(name, backbone_names(), n=5, cutoff=0.6)
    raise UserError(
        f"unknown backbone {name!r}; "
        + (f"closest names: {', '.join(close)}" if close else f"built-in: {', '.join(available_backbones())}")
        + "; `lightning-transfer backbones` explains the names (torchvision models, timm/NAME)"
    )


def load_weights(spec: BackboneSpec, source: nn.Module, weights: str) -> None:
    """Load ``imagenet``, ``none`` (keep the random init) or a state-dict file path into ``source``."""
    if weights == "none":
        return
    if weights == "imagenet":
        state = spec.imagenet_state_dict()
        origin = f"{spec.name} ImageNet weights"
    else:
        state = load_state_dict_file(weights)
        origin = f"weights file {weights!r}"
    state = spec.adapt_state_dict(source, state)
    try:
        source.load_state_dict(state)
    except RuntimeError as err:
        first_line = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserError(
            f"{origin} do not fit backbone {spec.name!r} ({first_line}); "
            f"pass weights saved from {spec.description}"
        ) from None


def load_source(spec: BackboneSpec, weights: str) -> nn.Module:
    """The upstream model with weights ``imagenet``, ``none`` (random) or a state-dict file path."""
    source = spec.build_source()
    load_weights(spec, source, weights)
    return source


def create_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """The conv base of ``name`` (no top), as named blocks, with the requested weights.

    The blocks are made first: a model that cannot be split is refused before weights are fetched.
    They share the upstream model's parameters, so loading the weights into it loads them into the blocks.
    """
    spec = get_spec(name)
    source = spec.build_source()
    body = spec.to_blocks(source)
    load_weights(spec, source, weights)
    return Backbone(spec, body)
