"""Image folders in, batches out: listing, decoding, bad-image screening, datasets, the data module,
and getting a dataset (download, the book's Kaggle split, a summary)."""

from lightning_transfer.data.datamodule import ImageFolderDataModule
from lightning_transfer.data.datasets import ImageFiles
from lightning_transfer.data.folders import class_names_of, is_image_file, list_images, list_predict_images
from lightning_transfer.data.images import load_rgb

__all__ = [
    "ImageFiles",
    "ImageFolderDataModule",
    "class_names_of",
    "is_image_file",
    "list_images",
    "list_predict_images",
    "load_rgb",
]
