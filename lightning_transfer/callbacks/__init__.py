"""Lightning callbacks: staged fine-tuning, checkpoints for resuming, training curves, the test
report (with its top losses), the predictions CSV and Grad-CAM while training. Each can be named in
a config by its short class path, e.g. ``lightning_transfer.callbacks.StagedFinetuning``."""

from lightning_transfer.callbacks.checkpointing import (
    ResumeHint,
    checkpoint_file,
    find_last_checkpoint,
    last_epoch_checkpoint,
)
from lightning_transfer.callbacks.curves import TrainingCurves
from lightning_transfer.callbacks.finetuning import Stage, StagedFinetuning
from lightning_transfer.callbacks.gradcam_logger import GradCamLogger
from lightning_transfer.callbacks.predictions import PredictionCSVWriter
from lightning_transfer.callbacks.test_report import TestReport

__all__ = [
    "GradCamLogger",
    "PredictionCSVWriter",
    "ResumeHint",
    "Stage",
    "StagedFinetuning",
    "TestReport",
    "TrainingCurves",
    "checkpoint_file",
    "find_last_checkpoint",
    "last_epoch_checkpoint",
]
