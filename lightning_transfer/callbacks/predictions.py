"""Writes ``lightning-transfer predict`` results as CSV: path, label, one probability per class."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_transfer.callbacks.gathering import gather_by_path
from lightning_transfer.utils.run_folder import run_folder


class PredictionCSVWriter(BasePredictionWriter):
    """Collects predictions and writes them once, at the end of ``predict``, in the images' order.

    With several processes (DDP) each predicts its own share of the images (Lightning's predict
    sampler splits them without repeats); the shares are gathered and rank 0 writes the one file.

    Args:
        output: CSV file to write; default ``predictions.csv`` in the run's log directory.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        output = Path(self.output) if self.output else run_folder(trainer) / "predictions.csv"  # collective
        rows = gather_by_path(trainer, [
            (path, probabilities.tolist())
            for batch in predictions
            for path, probabilities in zip(batch["path"], batch["probabilities"].cpu())
        ])
        if not trainer.is_global_zero:
            return
        class_names = pl_module.class_names
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", *(f"p_{name}" for name in class_names)])
            for path, probs in rows:
                label = class_names[max(range(len(probs)), key=probs.__getitem__)]
                writer.writerow([path, label, *(f"{p:.6f}" for p in probs)])
        print(f"wrote {len(rows)} predictions to {output}")
