"""Top losses: the test images the model got most confidently wrong, each with where it looked.

fastai's ``plot_top_losses`` shows the images; here each also gets its Grad-CAM overlay for the
predicted class, so the figure shows why. Images are ranked by the loss of their true class
(``-log p_true``): misclassified ones first, the most confident mistake first; when fewer than N are
wrong, the least confident right ones follow. The ranking works on the test report's gathered rows
(each image once, also under DDP), and the one process that writes the files runs Grad-CAM for the
N images only, in batches.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightning_transfer.data import load_rgb
from lightning_transfer.interpret import Classifier, gradcam_overlays
from lightning_transfer.utils.plotting import new_figure, save_figure

PNG, CSV = "test_top_losses.png", "test_top_losses.csv"
GRADCAM_BATCH = 16
COLUMNS = 4


@dataclass(frozen=True)
class TopLoss:
    """One ranked test image."""

    path: str
    label: int
    predicted: int
    p_true: float
    p_predicted: float

    @property
    def loss(self) -> float:
        """Cross-entropy of the true class (natural log), as the model is trained on."""
        return -math.log(max(self.p_true, 1e-45))


def rank_top_losses(
    paths: Sequence[str], labels: torch.Tensor, probabilities: torch.Tensor, count: int
) -> list[TopLoss]:
    """The ``count`` top losses of (N,) labels and (N, C) probabilities: wrong ones first, each
    group by decreasing loss of the true class; ties keep the rows' (path) order."""
    truth = labels.tolist()
    p_true = probabilities.gather(1, labels[:, None])[:, 0].tolist()
    p_predicted, predicted = (values.tolist() for values in probabilities.max(dim=1))
    order = sorted(range(len(paths)), key=lambda i: (predicted[i] == truth[i], p_true[i]))
    return [TopLoss(paths[i], truth[i], predicted[i], p_true[i], p_predicted[i]) for i in order[:count]]


def gradcam_tiles(model: Classifier, items: Sequence[TopLoss]) -> list[Image.Image]:
    """Each image at the model's input size beside its Grad-CAM overlay for the predicted class."""
    size = model.image_size
    tiles = []
    for start in range(0, len(items), GRADCAM_BATCH):
        chunk = items[start : start + GRADCAM_BATCH]
        images = [load_rgb(item.path) for item in chunk]
        for shown, overlaid in gradcam_overlays(model, images, [item.predicted for item in chunk]):
            tile = Image.new("RGB", (2 * size, size))
            tile.paste(shown, (0, 0))
            tile.paste(overlaid, (size, 0))
            tiles.append(tile)
    return tiles


def plot_top_losses(items: Sequence[TopLoss], tiles: Sequence[Image.Image], class_names: Sequence[str],
                    path: Path) -> Path:
    """A titled grid: image and overlay, true class, prediction and its probability (mistakes in red)."""
    columns = min(COLUMNS, len(items))
    rows = math.ceil(len(items) / columns)
    figure = new_figure(3.2 * columns, 2.0 * rows + 0.5)
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, item, tile in zip(axes.flat, items, tiles):
        axis.imshow(np.asarray(tile))
        wrong = item.predicted != item.label
        axis.set_title(
            f"{Path(item.path).name}\ntrue {class_names[item.label]}, predicted "
            f"{class_names[item.predicted]} {item.p_predicted:.2f}",
            fontsize=8, color="tab:red" if wrong else "black",
        )
    wrong = sum(item.predicted != item.label for item in items)
    figure.suptitle(f"Top losses (test): {wrong} of {len(items)} misclassified; "
                    "right: Grad-CAM of the predicted class", fontsize=10)
    return save_figure(figure, path)


def write_csv(items: Sequence[TopLoss], class_names: Sequence[str], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "path", "true", "predicted", "p_true", "p_predicted", "loss"])
        for rank, item in enumerate(items, start=1):
            writer.writerow([rank, item.path, class_names[item.label], class_names[item.predicted],
                             f"{item.p_true:.6f}", f"{item.p_predicted:.6f}", f"{item.loss:.6f}"])
    return path


def write_top_losses(
    model: Classifier, paths: Sequence[str], labels: torch.Tensor, probabilities: torch.Tensor, count: int,
    output_dir: Path,
) -> None:
    """``test_top_losses.{png,csv}`` in ``output_dir`` for the ``count`` top losses."""
    items = rank_top_losses(paths, labels, probabilities, count)
    print(f"top losses: Grad-CAM of {len(items)} images")
    class_names = model.class_names
    plot_top_losses(items, gradcam_tiles(model, items), class_names, output_dir / PNG)
    write_csv(items, class_names, output_dir / CSV)
    wrong = sum(item.predicted != item.label for item in items)
    print(f"wrote {PNG}, {CSV} ({wrong} misclassified of the top {len(items)}) to {output_dir}")
