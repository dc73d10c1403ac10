"""Rendering what ``attribution`` computes: channel grids, filter-pattern grids, Grad-CAM overlays.

Pure tensor -> PIL image functions (colormaps from matplotlib, no pyplot state, so they are safe in
a web app) and a titled-PNG writer for the CLI.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torchvision.utils import make_grid

from lightning_transfer.interpret.attribution import FilterPatterns

ACTIVATION_COLORMAP = "viridis"
HEATMAP_COLORMAP = "jet"
OVERLAY_ALPHA = 0.4
"""Heatmap weight in the overlay, as in the book (heatmap * 0.4 + image)."""


def contrast(values: torch.Tensor, dims: tuple[int, ...], spread: float) -> torch.Tensor:
    """Standardize over ``dims``, scale to ``spread`` around 0.5, clip to [0, 1] (the book's display).

    Activations and filter patterns have arbitrary scales; this makes their structure visible.
    """
    values = values.float()
    centred = values - values.mean(dim=dims, keepdim=True)
    scaled = centred / (centred.std(dim=dims, keepdim=True) + 1e-5)
    return (scaled * spread + 0.5).clamp(0, 1)


def colorize(values: torch.Tensor, colormap: str) -> np.ndarray:
    """(..., H, W) values in [0, 1] -> (..., H, W, 3) uint8 RGB through a matplotlib colormap."""
    rgba = matplotlib.colormaps[colormap](values.detach().cpu().numpy())
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def tile(images: np.ndarray, columns: int, pad: int = 1) -> Image.Image:
    """(N, H, W, 3) uint8 -> one grid image, ``columns`` wide, with white gaps and border."""
    tiles = torch.from_numpy(images).permute(0, 3, 1, 2)
    grid = make_grid(tiles, nrow=min(columns, len(tiles)), padding=pad, pad_value=255)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def colored_channels(activation: torch.Tensor) -> np.ndarray:
    """(C, H, W) activation of one image -> (C, H, W, 3) uint8, each channel contrast-stretched."""
    return colorize(contrast(activation, (1, 2), 0.25), ACTIVATION_COLORMAP)


def channel_images(activation: torch.Tensor) -> list[Image.Image]:
    """(C, H, W) activation of one image -> one colored image per channel."""
    return [Image.fromarray(array) for array in colored_channels(activation)]


def activation_grid(activation: torch.Tensor, columns: int = 16) -> Image.Image:
    """(C, H, W) activation of one image -> its channels side by side (the book's 5.4.1 figures)."""
    return tile(colored_channels(activation), columns)


def filter_grid(patterns: FilterPatterns, columns: int = 8) -> Image.Image:
    """Filter patterns -> one grid of RGB images (the book's 5.4.2 figures)."""
    pixels = contrast(patterns.images, (1, 2, 3), 0.1).permute(0, 2, 3, 1)
    return tile((pixels.numpy() * 255).round().astype(np.uint8), columns)


def heatmap_image(heatmap: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """(H, W) Grad-CAM map in [0, 1] -> colored image resized to ``size`` (width, height)."""
    return Image.fromarray(colorize(heatmap, HEATMAP_COLORMAP)).resize(size, Image.Resampling.BILINEAR)


def overlay(image: Image.Image, heatmap: torch.Tensor) -> Image.Image:
    """The heatmap blended over the original image, at the image's own size."""
    return Image.blend(image.convert("RGB"), heatmap_image(heatmap, image.size), OVERLAY_ALPHA)


def save_titled(
    image: Image.Image, title: str, path: str | Path, width_range: tuple[int, int] = (800, 1600)
) -> Path:
    """Write ``image`` as a PNG with ``title`` above it, scaled into ``width_range`` pixels wide.

    Small grids are enlarged without smoothing (each activation pixel stays a crisp square); wide
    ones are shrunk with an area filter so the file stays small.
    """
    low, high = width_range
    width = min(max(image.width, low), high)
    height = round(image.height * width / image.width)
    resample = Image.Resampling.NEAREST if width >= image.width else Image.Resampling.BOX
    image = image.resize((width, height), resample)
    dpi, title_height = 100, 40
    figure = Figure(figsize=(width / dpi, (height + title_height) / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    figure.figimage(np.asarray(image), xo=0, yo=0)
    figure.text(0.5, 1 - 8 / (height + title_height), title, ha="center", va="top", fontsize=11)
    figure.savefig(path, dpi=dpi)
    return Path(path)


def shape_title(layer: str, activation: torch.Tensor) -> str:
    channels, height, width = activation.shape
    return f"{layer}: {channels} channels, {height}x{width}"
