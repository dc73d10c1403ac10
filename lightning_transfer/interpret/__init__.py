"""Seeing what the convnet learned: computing with Captum (``attribution``), turning the results
into images (``render``), and one-call views of a classifier and a photo for apps (``views``)."""

from lightning_transfer.interpret.attribution import (
    Classifier,
    FilterPatterns,
    class_index,
    default_layers,
    filter_patterns,
    gradcam,
    image_batch,
    layer_activations,
    layer_channels,
)
from lightning_transfer.interpret.imagenet import ImageNetClassifier
from lightning_transfer.interpret.render import activation_grid, filter_grid, overlay, save_titled, shape_title
from lightning_transfer.interpret.views import (
    ActivationView,
    GradCamView,
    activation_view,
    gradcam_overlays,
    gradcam_view,
    predict_and_gradcam,
)

__all__ = [
    "ActivationView",
    "Classifier",
    "FilterPatterns",
    "GradCamView",
    "ImageNetClassifier",
    "activation_grid",
    "activation_view",
    "class_index",
    "default_layers",
    "filter_grid",
    "filter_patterns",
    "gradcam",
    "gradcam_overlays",
    "gradcam_view",
    "image_batch",
    "layer_activations",
    "layer_channels",
    "overlay",
    "predict_and_gradcam",
    "save_titled",
    "shape_title",
]
