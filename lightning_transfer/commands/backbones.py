"""``lightning-transfer backbones [NAME | PATTERN]``: which backbones there are and how to name them.

Without an argument: the built-ins and the two other name forms. With a pattern (``'resnet*'``,
``'timm/convnext*'``): the matching names. With a name: that backbone's blocks, layers, input size
and preprocessing, from the model itself (built with random weights, so it works offline).
"""

from __future__ import annotations

import argparse
import fnmatch
import textwrap

import timm

from lightning_transfer.backbones import backbone_names, built_in_specs, create_backbone
from lightning_transfer.backbones.generic import TIMM_PREFIX, torchvision_names

OVERVIEW = """\
Other backbones, by name (--model.backbone NAME, visualize --backbone NAME):
  torchvision  any of its {torchvision} classification models by its own name:
               resnet50, convnext_tiny, efficientnet_b0, mobilenet_v3_large, regnet_y_400mf, ...
  timm         any of its {timm} models as timm/NAME, optionally with a weights tag:
               timm/resnet10t, timm/convnext_atto, timm/resnet50.a1_in1k, ...
Their blocks, preprocessing, Grad-CAM layer and ImageNet class names come from the model and its
weights. ViT-style models (ViT, DeiT, BEiT, Swin), whose features are tokens rather than a
convolutional feature map, are refused. --model.weights: imagenet (the library's default pretrained
weights, downloaded once into TORCH_HOME or the Hugging Face cache), none, or a state-dict file.

  lightning-transfer backbones 'resnet*'        names matching a pattern ('timm/convnext*' for timm)
  lightning-transfer backbones resnet50         one backbone's blocks, layers and preprocessing
"""


def overview() -> str:
    built_in = "\n".join(
        f"  {spec.name:<19}{spec.description}; {spec.default_image_size} px" for spec in built_in_specs()
    )
    timm_count = sum(name.startswith(TIMM_PREFIX) for name in backbone_names())
    others = OVERVIEW.format(torchvision=len(torchvision_names()), timm=timm_count)
    return f"Built-in backbones (written out by hand, Keras-style names):\n{built_in}\n\n{others}"


def matching(pattern: str) -> str:
    if pattern.startswith(TIMM_PREFIX) and "." in pattern:  # weights tags: timm/resnet50.*
        names = [TIMM_PREFIX + name for name in timm.list_pretrained(pattern.removeprefix(TIMM_PREFIX))]
    else:
        names = fnmatch.filter(backbone_names(), pattern)
    if not names:
        return f"no backbone name matches {pattern!r}; `lightning-transfer backbones` explains the names"
    return f"{len(names)} names match {pattern!r}:\n" + textwrap.fill(", ".join(names), width=100)


def _wrapped(label: str, items: list[str]) -> str:
    return textwrap.fill(", ".join(items), width=100, initial_indent=f"  {label}", subsequent_indent=" " * 4)


def describe(name: str) -> str:
    backbone = create_backbone(name, "none")
    spec = backbone.spec
    size = spec.default_image_size
    channels, height, width = backbone.output_shape(size)
    pre = spec.preprocessing
    return "\n".join([
        f"{name}: {spec.description}",
        f"  input: {size} px by default, {pre.interpolation.value} resize, mean {pre.mean}, std {pre.std}",
        _wrapped("blocks (bottom to top, for fine-tuning stages): ", backbone.block_names),
        _wrapped("layers (for visualize --layers): ", list(backbone.layers())),
        f"  Grad-CAM layer: {backbone.cam_layer}",
        f"  features at {size} px: {channels} x {height} x {width}",
    ])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="lightning-transfer backbones",
        description="Which backbones there are and how to name them (--model.backbone NAME).",
    )
    parser.add_argument(
        "name", nargs="?",
        help="a backbone to describe (blocks, layers, preprocessing), or a pattern such as 'resnet*' "
        "or 'timm/convnext*' to list the matching names",
    )
    args = parser.parse_args(argv)
    if args.name is None:
        print(overview())
    elif any(char in args.name for char in "*?["):
        print(matching(args.name))
    else:
        print(describe(args.name))
