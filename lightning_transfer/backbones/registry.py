"""Backbone registry: one name -> a spec (like timm's ``create_model``), and building from it."""

from __future__ import annotations

from torch import nn

from lightning_transfer.backbones.backbone import Backbone
from lightning_transfer.backbones.efficientnet import EFFICIENTNET_LITE0
from lightning_transfer.backbones.spec import BackboneSpec
from lightning_transfer.backbones.vgg import VGG16
from lightning_transfer.backbones.weights import load_state_dict_file
from lightning_transfer.utils.errors import UserError

_REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in (VGG16, EFFICIENTNET_LITE0)}


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown backbone {name!r}; choose one of: {', '.join(available_backbones())}"
        ) from None


def load_source(spec: BackboneSpec, weights: str) -> nn.Module:
    """The upstream model with weights ``imagenet``, ``none`` (random) or a state-dict file path."""
    source = spec.build_source()
    if weights == "none":
        return source
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
    return source


def create_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """The conv base of ``name`` (no top), as named blocks, with the requested weights."""
    spec = get_spec(name)
    return Backbone(spec, spec.to_blocks(load_source(spec, weights)))
