"""Pretrained conv bases by name: the registry, the named-block ``Backbone``, weights and preprocessing."""

from lightning_transfer.backbones.backbone import Backbone
from lightning_transfer.backbones.registry import available_backbones, create_backbone, get_spec, load_source
from lightning_transfer.backbones.spec import BackboneSpec, Preprocessing

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Preprocessing",
    "available_backbones",
    "create_backbone",
    "get_spec",
    "load_source",
]
