"""Transfer learning on small image datasets with PyTorch Lightning, and a look at what it learned."""

from lightning_transfer.backbones import Backbone, BackboneSpec, available_backbones, create_backbone, get_spec
from lightning_transfer.checkpoint import read_checkpoint
from lightning_transfer.data import ImageFolderDataModule
from lightning_transfer.model import TransferClassifier, load_model
from lightning_transfer.utils import moved_modules
from lightning_transfer.utils.errors import UserError, WeightsUnavailableError

moved_modules.install()

__all__ = [
    "Backbone",
    "BackboneSpec",
    "ImageFolderDataModule",
    "TransferClassifier",
    "UserError",
    "WeightsUnavailableError",
    "available_backbones",
    "create_backbone",
    "get_spec",
    "load_model",
    "read_checkpoint",
]
