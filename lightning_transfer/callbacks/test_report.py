"""Test report: per-class precision/recall/F1, accuracy, ROC-AUC (binary) and a confusion matrix.

The metrics are computed once, with torchmetrics, from every test prediction the model returns in
``test_step``, each image counted once also when several processes share the test set; the report
lands in the run's folder as JSON (for tools), markdown (for people; also printed) and a
confusion-matrix PNG.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.classification import (
    binary_auroc,
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from lightning_transfer.callbacks.gathering import gather_by_path
from lightning_transfer.utils.plotting import new_figure, save_figure
from lightning_transfer.utils.run_folder import run_folder


def classification_report(probabilities: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Metrics of (N, C) class probabilities against (N,) labels, as plain JSON-ready values.

    ROC-AUC is reported for two classes only, with the second class as the positive one.
    """
    num_classes = len(class_names)
    per_class = {
        "precision": multiclass_precision(probabilities, labels, num_classes, average=None),
        "recall": multiclass_recall(probabilities, labels, num_classes, average=None),
        "f1": multiclass_f1_score(probabilities, labels, num_classes, average=None),
    }
    confusion = multiclass_confusion_matrix(probabilities, labels, num_classes)
    report = {
        "images": len(labels),
        "accuracy": multiclass_accuracy(probabilities, labels, num_classes, average="micro").item(),
        "classes": {
            name: {
                **{metric: values[index].item() for metric, values in per_class.items()},
                "support": int(confusion[index].sum()),
            }
            for index, name in enumerate(class_names)
        },
        "confusion_matrix": confusion.tolist(),
    }
    if num_classes == 2:
        report["roc_auc"] = binary_auroc(probabilities[:, 1], labels).item()
        report["roc_auc_positive_class"] = class_names[1]
    return report


def markdown_table(report: dict) -> str:
    """The report as a small markdown table plus one summary line."""
    lines = ["| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
    for name, row in report["classes"].items():
        lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    summary = f"accuracy {report['accuracy']:.3f} on {report['images']} images"
    if "roc_auc" in report:
        summary += f", ROC-AUC {report['roc_auc']:.3f} ({report['roc_auc_positive_class']} as positive)"
    return "\n".join(lines) + "\n\n" + summary + "\n"


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    """Counts per (true, predicted) class, annotated, rows = true class (torchmetrics' plot)."""
    size = 1.2 + 0.8 * len(class_names)
    figure = new_figure(size + 1, size)
    axis = figure.subplots()
    MulticlassConfusionMatrix(len(class_names)).plot(
        torch.tensor(confusion), ax=axis, labels=list(class_names), cmap="Blues"
    )
    axis.set_title("Confusion matrix (test)")
    return save_figure(figure, path)


@dataclass(frozen=True)
class ImagePredictions:
    """Every test image once, in path order: what the report is computed from."""

    paths: list[str]
    labels: torch.Tensor
    """(N,) true class indices."""
    probabilities: torch.Tensor
    """(N, C) float32 class probabilities."""


class TestReport(Callback):
    """Collects test probabilities and labels; writes ``test_report.{json,md}`` and
    ``test_confusion_matrix.png`` to the run's folder at the end of ``test``.

    After ``test``, :attr:`predictions` holds every test image's prediction (on every process).

    Args:
        output_dir: where to write; default the run's folder.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir
        self.rows: list[tuple[str, int, list[float]]] = []
        """This process's (path, label, probabilities) per test image."""
        self.predictions: ImagePredictions | None = None

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows, self.predictions = [], None

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: dict, batch: dict, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.rows.extend(zip(batch["path"], outputs["label"].tolist(), outputs["probabilities"].cpu().tolist()))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = gather_by_path(trainer, self.rows)  # collective, like run_folder: every process makes both
        output_dir = Path(self.output_dir) if self.output_dir else run_folder(trainer)
        if not rows:
            return
        paths, labels, probabilities = zip(*rows)
        self.predictions = ImagePredictions(list(paths), torch.tensor(labels), torch.tensor(probabilities))
        if not trainer.is_global_zero:
            return
        class_names = pl_module.class_names
        report = classification_report(self.predictions.probabilities, self.predictions.labels, class_names)
        output_dir.mkdir(parents=True, exist_ok=True)
        table = markdown_table(report)
        (output_dir / "test_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (output_dir / "test_report.md").write_text(table)
        plot_confusion_matrix(report["confusion_matrix"], class_names, output_dir / "test_confusion_matrix.png")
        print(f"\n{table}\nwrote test_report.json, test_report.md, test_confusion_matrix.png to {output_dir}")
