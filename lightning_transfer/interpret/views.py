"""One-call views for apps such as the demo: a classifier and a PIL image in, images to show out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from lightning_transfer.interpret.attribution import (
    Classifier,
    class_index,
    gradcam,
    image_batch,
    layer_activations,
)
from lightning_transfer.interpret.render import activation_grid, channel_images, heatmap_image, overlay, shape_title
from lightning_transfer.utils.runtime import eval_mode


@dataclass(frozen=True)
class GradCamView:
    """Grad-CAM of one image, ready to show."""

    target: str
    """The explained class."""
    probabilities: dict[str, float]
    """The model's probability for every class (the prediction Grad-CAM was computed on)."""
    cam: torch.Tensor
    """(H, W) Grad-CAM in [0, 1] at the model's input size; all zero when nothing counts for the target."""
    heatmap: Image.Image
    """Colored heatmap at the image's size."""
    overlay: Image.Image
    """Heatmap blended over the image."""

    @property
    def probability(self) -> float:
        """The model's probability for the explained class."""
        return self.probabilities[self.target]

    @classmethod
    def render(
        cls, image: Image.Image, class_names: Sequence[str], probabilities: torch.Tensor, target: int, cam: torch.Tensor
    ) -> GradCamView:
        """The view of one image from its row of :func:`predict_and_gradcam`'s results."""
        return cls(
            target=class_names[target],
            probabilities=dict(zip(class_names, probabilities.tolist())),
            cam=cam,
            heatmap=heatmap_image(cam, image.size),
            overlay=overlay(image, cam),
        )


def predict_and_gradcam(
    model: Classifier, batch: torch.Tensor, target: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class probabilities (N, C), the explained class of each image (N,) and its Grad-CAM (N, H, W),
    on the CPU, for a normalized batch; ``target`` None explains each image's predicted class."""
    with torch.no_grad(), eval_mode(model):
        probabilities = model(batch).softmax(dim=1)
    targets = probabilities.argmax(dim=1) if target is None else torch.full((len(batch),), target)
    return probabilities.cpu(), targets.cpu(), gradcam(model, batch, targets.to(batch.device)).cpu()


def gradcam_view(model: Classifier, image: Image.Image, target: str | None = None) -> GradCamView:
    """Grad-CAM of one PIL image for ``target`` (a class name; None = the predicted class)."""
    index = None if target is None else class_index(model.class_names, target)
    batch = image_batch(model.backbone, [image], model.image_size)
    probabilities, targets, cams = predict_and_gradcam(model, batch, index)
    return GradCamView.render(image, model.class_names, probabilities[0], int(targets[0]), cams[0])


def gradcam_overlays(
    model: Classifier, images: Sequence[Image.Image], targets: Sequence[int] | None = None
) -> list[tuple[Image.Image, Image.Image]]:
    """Each image at the model's input size, and that image overlaid with its Grad-CAM for ``targets``
    (None: the predicted classes). Also inside Lightning's validation and test, which run in
    inference mode: Grad-CAM needs gradients."""
    size = model.image_size
    with torch.inference_mode(False):
        maps = gradcam(model, image_batch(model.backbone, images, size), targets).cpu()
    shown = [image.resize((size, size)) for image in images]
    return [(image, overlay(image, heatmap)) for image, heatmap in zip(shown, maps)]


@dataclass(frozen=True)
class ActivationView:
    """One layer's activation for one image, ready to show."""

    layer: str
    title: str
    """Layer name and shape, e.g. ``block1_conv1: 64 channels, 150x150``."""
    channels: list[Image.Image]
    """One colored image per channel."""
    grid: Image.Image
    """All channels in one grid, 16 per row."""


def activation_view(model: Classifier, image: Image.Image, layer: str) -> ActivationView:
    """Activations of one named backbone layer (``Backbone.layers()``) for one PIL image."""
    batch = image_batch(model.backbone, [image], model.image_size)
    activation = layer_activations(model.backbone, batch, [layer])[layer][0]
    return ActivationView(
        layer=layer,
        title=shape_title(layer, activation),
        channels=channel_images(activation),
        grid=activation_grid(activation),
    )
