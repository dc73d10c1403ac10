"""GradCamLogger: watch the model's attention move while it trains.

After every validation epoch, Grad-CAM overlays of a few fixed validation images (explaining the
predicted class) go to TensorBoard as one image grid; with other loggers, the grid is written as
``gradcam/epochNN.png`` in the run's log folder. From YAML::

    trainer:
      callbacks:
        - class_path: lightning_transfer.callbacks.GradCamLogger
          init_args: {num_images: 8}
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor
from torchvision.utils import make_grid

from lightning_transfer.data import load_rgb
from lightning_transfer.interpret import gradcam_overlays
from lightning_transfer.utils.run_folder import run_folder


class GradCamLogger(Callback):
    """Logs Grad-CAM overlays of ``num_images`` validation images after each validation epoch.

    The images are spread evenly over the validation set (which is sorted by class, so every class
    shows up) and stay the same all run, so epochs compare directly.

    Args:
        num_images: how many validation images to explain.
        every_n_epochs: log every N-th epoch only.
    """

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1) -> None:
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.paths: list[str] | None = None

    def _validation_paths(self, trainer: Trainer) -> list[str]:
        loaders = trainer.val_dataloaders
        dataset = (loaders[0] if isinstance(loaders, (list, tuple)) else loaders).dataset
        picks = torch.linspace(0, len(dataset) - 1, min(self.num_images, len(dataset))).round().long()
        items = [dataset[int(index)] for index in picks.unique()]
        if not all("path" in item for item in items):
            rank_zero_warn("GradCamLogger needs validation items with a 'path'; logging nothing")
            return []
        return [item["path"] for item in items]

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        folder = run_folder(trainer) / "gradcam"  # on every process: run_folder is a collective call
        if not trainer.is_global_zero:
            return
        if self.paths is None:
            self.paths = self._validation_paths(trainer)
        if not self.paths:
            return
        overlays = gradcam_overlays(pl_module, [load_rgb(path) for path in self.paths])
        tiles = [pil_to_tensor(overlaid) for _, overlaid in overlays]
        grid = make_grid(tiles, nrow=min(len(tiles), 4), padding=2, pad_value=255)
        self._log(trainer, grid, folder)

    def _log(self, trainer: Trainer, grid: torch.Tensor, folder: Path) -> None:
        """To TensorBoard when it is a logger, else as a PNG in ``folder``."""
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("gradcam", grid, global_step=trainer.global_step)
                return
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(folder / f"epoch{trainer.current_epoch:02d}.png")
