"""What the convnet learned, as tensors: intermediate activations, filter patterns, Grad-CAM.

Computing only (Captum style); ``render`` turns the results into images. Layer names are the
registry's (``Backbone.layers()``: VGG16 ``block1_conv1`` .. ``block5_pool``, EfficientNet-Lite0
``stem``, ``block1`` .. ``block7``, ``top``), so CLI flags and the demo speak the same words.
Every function puts the model in eval mode while it works (BatchNorm statistics, no dropout) and
restores the previous mode afterwards.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from captum.attr import LayerActivation, LayerAttribution, LayerGradCam
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from lightning_transfer.backbones import Backbone
from lightning_transfer.interpret.imagenet import ImageNetClassifier
from lightning_transfer.model import TransferClassifier
from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.runtime import eval_mode

Classifier = TransferClassifier | ImageNetClassifier
"""What Grad-CAM explains: a backbone + head with ``class_names`` and ``image_size``."""


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def image_batch(backbone: Backbone, images: Sequence[Image.Image], image_size: int) -> torch.Tensor:
    """PIL images -> the backbone's normalized input batch, on the backbone's device."""
    transform = backbone.spec.preprocessing.transform(image_size)
    return torch.stack([transform(image) for image in images]).to(device_of(backbone))


def default_layers(backbone: Backbone, count: int = 5) -> list[str]:
    """A few layers across the depth: the first layer of evenly spaced blocks (VGG16: blockN_conv1)."""
    layers = backbone.layers()
    firsts = []
    for block in backbone.block_names:
        inside = [name for name in layers if name.startswith(f"{block}_")]
        firsts.append(inside[0] if inside else block)
    if len(firsts) <= count:
        return firsts
    picks = torch.linspace(0, len(firsts) - 1, count).round().long().tolist()
    return [firsts[index] for index in picks]


@torch.no_grad()
def layer_activations(
    backbone: Backbone, images: torch.Tensor, layer_names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Outputs of several named layers for a batch of normalized images, in one forward pass."""
    layers = [backbone.layer(name) for name in layer_names]
    with eval_mode(backbone):
        outputs = LayerActivation(backbone, layers).attribute(images)
    return dict(zip(layer_names, outputs))


class _ReachedLayer(Exception):
    """Stops a forward pass once the layer of interest has produced its output."""


def forward_to(backbone: Backbone, layer_name: str, images: torch.Tensor) -> torch.Tensor:
    """One layer's output without running the layers above it (filter ascent runs it many times)."""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        captured.append(output)
        raise _ReachedLayer

    handle = backbone.layer(layer_name).register_forward_hook(hook)
    try:
        backbone(images)
    except _ReachedLayer:
        pass
    finally:
        handle.remove()
    return captured[0]


@dataclass(frozen=True)
class FilterPatterns:
    """Inputs that maximize single filters of one layer, found by gradient ascent."""

    layer: str
    filters: list[int]
    images: torch.Tensor
    """(N, 3, size, size) RGB pixels, centred on grey 0.5, not clipped (render with contrast)."""
    activation_before: torch.Tensor
    """(N,) each filter's mean activation on the starting grey+noise image."""
    activation_after: torch.Tensor
    """(N,) the same after the ascent."""


def layer_channels(backbone: Backbone, layer_name: str) -> int:
    with torch.no_grad(), eval_mode(backbone):
        probe = torch.zeros(1, 3, 32, 32, device=device_of(backbone))
        return forward_to(backbone, layer_name, probe).shape[1]


def filter_patterns(
    backbone: Backbone,
    layer_name: str,
    filters: Sequence[int],
    size: int = 64,
    steps: int = 40,
    step_size: float = 1 / 255,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> FilterPatterns:
    """Gradient ascent in input space on each filter's mean activation (Chollet 5.4.2).

    Starts from a grey image with a little noise; each step moves the pixels by the gradient
    normalized to unit RMS, times ``step_size`` (one grey level by default, like the book). The
    ascent runs in RGB pixel space and goes through the backbone's own normalization, so the
    patterns are images for either backbone. Filters are optimized ``batch_size`` at a time: with
    the backbone in eval mode the images of a batch do not interact.
    """
    channels = layer_channels(backbone, layer_name)
    bad = [index for index in filters if not 0 <= index < channels]
    if bad:
        raise UserError(f"layer {layer_name!r} has filters 0..{channels - 1}; got {bad}")
    normalize = backbone.spec.preprocessing.to_model_input()
    device = device_of(backbone)
    generator = torch.Generator().manual_seed(seed)
    chunks = [list(filters[start : start + batch_size]) for start in range(0, len(filters), batch_size)]
    images, before, after = [], [], []
    bar = tqdm(total=steps * len(chunks), desc=f"filters {layer_name}", disable=not progress, leave=False)

    def mean_activation(pixels: torch.Tensor, chunk: list[int]) -> torch.Tensor:
        output = forward_to(backbone, layer_name, normalize(pixels))
        return output[torch.arange(len(chunk)), chunk].mean(dim=(1, 2))

    with eval_mode(backbone), torch.enable_grad():
        for chunk in chunks:
            noise = torch.rand(len(chunk), 3, size, size, generator=generator)
            pixels = (0.5 + 0.08 * (noise - 0.5)).to(device).requires_grad_()
            for step in range(steps):
                activation = mean_activation(pixels, chunk)
                if step == 0:
                    before.append(activation.detach())
                (grad,) = torch.autograd.grad(activation.sum(), pixels)
                grad = grad / (grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-5)
                pixels = (pixels + step_size * grad).detach().requires_grad_()
                bar.update()
            with torch.no_grad():
                after.append(mean_activation(pixels, chunk))
            images.append(pixels.detach())
    bar.close()
    return FilterPatterns(
        layer=layer_name,
        filters=list(filters),
        images=torch.cat(images).cpu(),
        activation_before=torch.cat(before).cpu(),
        activation_after=torch.cat(after).cpu(),
    )


def class_index(class_names: Sequence[str], name: str) -> int:
    """Index of a class by name; unknown names get an error listing the valid ones (or the closest)."""
    if name in class_names:
        return list(class_names).index(name)
    if len(class_names) <= 30:
        choices = f"valid classes: {', '.join(class_names)}"
    else:
        close = [c for c in class_names if name.lower() in c.lower()]
        close += [c for c in difflib.get_close_matches(name, class_names, n=5, cutoff=0.6) if c not in close]
        close = close[:5]
        hint = f"closest: {', '.join(close)}" if close else f"e.g. {', '.join(class_names[:5])}"
        choices = f"{len(class_names)} classes, {hint}"
    raise UserError(f"unknown class {name!r}; {choices}")


def gradcam(
    model: Classifier, images: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] at the input size, for ``target`` class indices.

    Captum ``LayerGradCam`` on the backbone's CAM layer (its last conv stage's output), ReLU'd so only
    evidence *for* the class shows, upsampled bilinearly and divided by each map's maximum.
    ``target=None`` explains each image's predicted class.
    """
    backbone = model.backbone
    layer = backbone.layer(backbone.cam_layer)
    with eval_mode(model):
        if target is None:
            with torch.no_grad():
                target = model(images).argmax(dim=1)
        with torch.enable_grad():
            maps = LayerGradCam(model, layer).attribute(images, target=target, relu_attributions=True)
    maps = LayerAttribution.interpolate(maps.detach(), tuple(images.shape[-2:]), "bilinear")[:, 0]
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1)
