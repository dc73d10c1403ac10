"""Pretrained conv bases by name (built-in, torchvision, ``timm/``): the registry, the named-block
``Backbone``, weights and preprocessing."""

from lightning_transfer.backbones.backbone import Backbone
from lightning_transfer.backbones.registry import (
    available_backbones,
    backbone_names,
    built_in_specs,
    create_backbone,
    get_spec,
    load_source,
    load_weights,
)
from lightning_transfer.backbones.spec import BackboneSpec, Preprocessing

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Preprocessing",
    "available_backbones",
    "backbone_names",
    "built_in_specs",
    "create_backbone",
    "get_spec",
    "load_source",
    "load_weights",
]
