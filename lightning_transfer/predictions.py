"""Writes ``lightning-transfer predict`` results as CSV: path, label, one probability per class."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionCSVWriter(BasePredictionWriter):
    """Collects predictions and writes them once, at the end of ``predict``.

    Args:
        output: CSV file to write; default ``predictions.csv`` in the run's log directory.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        output = Path(self.output or Path(trainer.log_dir or ".") / "predictions.csv")
        output.parent.mkdir(parents=True, exist_ok=True)
        class_names = pl_module.class_names
        rows = 0
        with output.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", *(f"p_{name}" for name in class_names)])
            for batch in predictions:
                probabilities: torch.Tensor = batch["probabilities"].float().cpu()
                for path, probs in zip(batch["path"], probabilities):
                    label = class_names[int(probs.argmax())]
                    writer.writerow([path, label, *(f"{p:.6f}" for p in probs.tolist())])
                    rows += 1
        print(f"wrote {rows} predictions to {output}")
