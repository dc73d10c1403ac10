"""Image folders -> datasets -> loaders: ``root/{train,val,test}/<class>/*.jpg``.

Class names come from ``train/``; every other split must have the same classes. Images are
decoded to RGB (EXIF orientation applied), squashed to ``image_size`` like Keras' ``target_size``,
augmented as uint8 tensors when asked, then normalized with the backbone's own preprocessing.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lightning import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lightning_transfer.backbones import Preprocessing, get_spec
from lightning_transfer.decoded_images import SharedImageStore
from lightning_transfer.errors import UserError
from lightning_transfer.files import default_cache_dir
from lightning_transfer.image_check import OnBadImage, decode_rgb, describe_error, find_bad_images, screen_images
from lightning_transfer.features import (
    ExtractionDtype,
    FeatureCache,
    FeatureDataset,
    FeatureExtractor,
)

if TYPE_CHECKING:
    from lightning_transfer.model import TransferClassifier

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}

Sample = tuple[Path, int]
# Evaluation batches over cached features: they are in memory and need no gradients, so larger
# batches give the same loss and accuracy in far fewer of Lightning's steps (about 1 ms each).
# Sized in bytes, so big flattened feature maps do not make a batch of gigabytes.
FEATURE_EVAL_BATCH_BYTES = 256 * 2**20
NO_DATA_ROOT = "no data root given; pass --data.root DIR (a folder with train/ and val/)"


def load_rgb(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Decode any PIL-readable image as RGB (EXIF orientation applied; see ``image_check.to_rgb``).

    ``max_pixels`` refuses bigger images from their header, before decoding (a small compressed
    file can expand to gigabytes; servers such as the demo need that bound).
    """
    try:
        return decode_rgb(path, max_pixels=max_pixels)
    except UserError:
        raise
    except Exception as err:  # broken files raise OSError, SyntaxError, ValueError, struct.error...
        raise UserError(f"cannot read image {str(path)!r}: {describe_error(err)}") from None


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def is_hidden(path: Path, folder: Path) -> bool:
    """Whether ``path`` or a folder above it (up to ``folder``) is hidden: ``.DS_Store``, ``.git/``..."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def class_names_of(split_dir: str | Path) -> list[str]:
    """Sorted sub-folder names of a split folder (hidden folders ignored)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise UserError(
            f"{str(split_dir)!r} is not a folder; the data root needs train/ and val/ (and optionally "
            "test/), each with one sub-folder per class"
        )
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UserError(f"{str(split_dir)!r} has no class sub-folders (e.g. {split_dir}/cat/*.jpg)")
    return names


def list_images(split_dir: Path, class_names: Sequence[str], max_per_class: int | None = None) -> list[Sample]:
    """(path, label) pairs of a split, checking it has exactly the expected classes."""
    found = class_names_of(split_dir)
    if found != list(class_names):
        raise UserError(
            f"{str(split_dir)!r} has classes {found} but train/ has {list(class_names)}; "
            "every split needs the same class folders"
        )
    samples: list[Sample] = []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        files = sorted(p for p in folder.rglob("*") if is_image_file(p) and not is_hidden(p, folder))
        if not files:
            raise UserError(f"class folder {str(folder)!r} holds no images")
        samples.extend((path, label) for path in files[:max_per_class])
    return samples


def non_image_files(split_dir: Path, class_names: Sequence[str]) -> list[Path]:
    """Visible files in the class folders that are not images: ignored for training, but reported."""
    return sorted(
        path
        for name in class_names
        for path in (split_dir / name).rglob("*")
        if path.is_file() and not is_image_file(path) and not is_hidden(path, split_dir)
    )


def list_predict_images(path: str | Path) -> list[Path]:
    """One image file, or every image under a folder (recursively), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if is_image_file(p) and not is_hidden(p, path))
        if files:
            return files
        raise UserError(f"no images found under {str(path)!r}")
    raise UserError(f"{str(path)!r} does not exist; pass an image file or a folder of images")


def augmentation() -> v2.Compose:
    """The book's ImageDataGenerator settings as torchvision v2 transforms on uint8 tensors.

    rotation 40 deg, width/height shift 0.2, shear 0.2 rad, zoom 0.2, horizontal flip.
    """
    return v2.Compose(
        [
            v2.RandomAffine(
                degrees=40, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=math.degrees(0.2)
            ),
            v2.RandomHorizontalFlip(),
        ]
    )


class ImageFiles(Dataset):
    """Image files with optional labels; yields dicts so images, labels and paths stay together.

    With ``decode_once`` (the resize step of ``transform``), each image is decoded and resized only
    the first time any loader process reads it and kept as a uint8 tensor shared by all of them;
    later epochs run only the rest of ``transform`` (augmentation, normalization) on it. Same pixels
    either way: the resize of an image already at the target size is a no-op.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int] | None,
        transform: Callable,
        decode_once: v2.Resize | None = None,
    ) -> None:
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else None
        self.transform = transform
        self.decode_once = decode_once
        self.decoded = SharedImageStore(len(self.paths), *decode_once.size) if decode_once is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def _pixels(self, index: int) -> Image.Image | torch.Tensor:
        if self.decoded is None:
            return load_rgb(self.paths[index])
        pixels = self.decoded.get(index)
        if pixels is None:
            pixels = self.decode_once(v2.functional.pil_to_tensor(load_rgb(self.paths[index])))
            self.decoded.put(index, pixels)
        return pixels

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.transform(self._pixels(index)), "path": str(self.paths[index])}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


def default_num_workers() -> int:
    return min(4, os.cpu_count() or 1)


class ImageFolderDataModule(LightningDataModule):
    """Loaders for ``root/{train,val,test}/<class>/`` image folders.

    Args:
        root: folder holding ``train/``, ``val/`` and optionally ``test/``.
        image_size: square input size (150 for VGG16 as in the book, 224 for EfficientNet).
        augment: apply the book's augmentation to training images every epoch.
        batch_size: images per batch.
        num_workers: loader processes; default min(4, CPU count).
        backbone: whose preprocessing (mean/std, resize filter) to apply; linked from the model.
        max_images_per_class: use only the first N images of each class per split (quick runs).
        predict_path: image file or folder for ``lightning-transfer predict``.
        keep_decoded: keep each image decoded and resized in memory after its first read, so later
            epochs skip JPEG decoding (uint8, about 150 KB per image at 224 px). On Linux the loader's
            workers share one copy; elsewhere, and in each DDP process, every process keeps its own.
        url: zip archive to download and extract into ``root`` when ``root`` has no ``train/`` yet
            (e.g. ``lightning_transfer.download.CATS_AND_DOGS_FILTERED_URL``).
        on_bad_image: what to do with files that do not decode, found by a check before the run
            (report in the log folder): ``skip`` them with a warning, or stop with an ``error``.
        cache_features: fast feature extraction: run the model's frozen backbone once over each
            split, cache the features on disk and train the head on them (needs ``augment false``).
        cache_dir: where cached features live; default ``$XDG_CACHE_HOME/lightning-transfer``
            (else ``~/.cache/lightning-transfer``).
        extraction_dtype: ``auto`` (bf16 autocast where the device runs it natively, else fp32),
            ``bf16`` or ``fp32``.
    """

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 150,
        augment: bool = False,
        batch_size: int = 32,
        num_workers: int | None = None,
        backbone: str = "vgg16",
        max_images_per_class: int | None = None,
        predict_path: str | None = None,
        keep_decoded: bool = False,
        url: str | None = None,
        on_bad_image: OnBadImage = "skip",
        cache_features: bool = False,
        cache_dir: str | None = None,
        extraction_dtype: ExtractionDtype = "auto",
    ) -> None:
        super().__init__()
        if image_size < 32:
            raise UserError(f"image_size={image_size} is too small; use at least 32 pixels")
        if cache_features and augment:
            raise UserError(
                "data.cache_features true computes each image's features once, so it cannot be combined "
                "with data.augment true (augmented images change every epoch); set one of them to false"
            )
        self.root = Path(root).expanduser() if root is not None else None
        self.image_size = image_size
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.preprocessing: Preprocessing = get_spec(backbone).preprocessing
        self.max_images_per_class = max_images_per_class
        self.predict_path = predict_path
        self.keep_decoded = keep_decoded
        self.url = url
        self.on_bad_image = on_bad_image
        self.cache_features = cache_features
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.extraction_dtype = extraction_dtype
        self.datasets: dict[str, Dataset] = {}
        self._threads_before_features: int | None = None

    @property
    def class_names(self) -> list[str]:
        return class_names_of(self._require_root() / "train")

    def _require_root(self) -> Path:
        if self.root is None:
            raise UserError(NO_DATA_ROOT)
        if not self.root.is_dir():
            raise UserError(f"data root {str(self.root)!r} does not exist; pass --data.root DIR")
        return self.root

    def prepare_data(self) -> None:
        """Once per machine, before any process loads data: download ``url`` into ``root`` if ``root``
        has no ``train/`` yet, then decode-check this stage's images (the verdict is cached on disk)."""
        from lightning_transfer.download import ensure_dataset  # download builds on this module

        if self.root is not None:
            ensure_dataset(self.root, self.url)
        stage = self.trainer.state.fn if self.trainer is not None else "fit"
        for split in STAGE_SPLITS.get(stage, ()):
            find_bad_images([path for path, _ in self._listed_samples(split)])
        if stage == "predict" and self.predict_path is not None:
            find_bad_images(list_predict_images(self.predict_path))

    def transform(self, train: bool) -> v2.Compose:
        return self.preprocessing.transform(self.image_size, augmentation() if train and self.augment else None)

    def _listed_samples(self, split: str) -> list[Sample]:
        return list_images(self._require_root() / split, self.class_names, self.max_images_per_class)

    def split_samples(self, split: str) -> list[Sample]:
        """A split's readable (path, label) pairs; unreadable images are reported, then skipped or refused."""
        samples = self._listed_samples(split)
        split_dir = self._require_root() / split
        ignored = non_image_files(split_dir, self.class_names)
        bad = self._screen(split, split_dir, [path for path, _ in samples], ignored)
        samples = [sample for sample in samples if sample[0] not in bad]
        emptied = sorted(set(range(len(self.class_names))) - {label for _, label in samples})
        if emptied:
            folder = split_dir / self.class_names[emptied[0]]
            raise UserError(f"class folder {str(folder)!r} holds no readable images (see the bad-image report)")
        return samples

    def _screen(self, split: str, where: Path, paths: list[Path], ignored: list[Path]) -> dict[Path, str]:
        """Unreadable images among ``paths``; the report goes to the run's log folder, from one process.

        ``trainer.log_dir`` is a collective call, so every process makes it; it is None under fast_dev_run.
        """
        trainer = self.trainer
        folder = (trainer.log_dir or trainer.default_root_dir) if trainer is not None else "."
        report = Path(folder).absolute() / f"bad_images_{split}.txt"
        write = trainer is None or trainer.is_global_zero
        return screen_images(str(where), paths, ignored, self.on_bad_image, report, write)

    def _labelled(self, split: str) -> ImageFiles:
        samples = self.split_samples(split)
        paths, labels = zip(*samples)
        decode_once = self.preprocessing.resize(self.image_size) if self.keep_decoded else None
        return ImageFiles(paths, labels, self.transform(train=split == "train"), decode_once)

    def setup(self, stage: str) -> None:
        if self.cache_features and stage != "predict":
            self._check_frozen_backbone()
        if stage == "fit":
            self.datasets["train"] = self._labelled("train")
            self.datasets["val"] = self._labelled("val")
        elif stage == "validate":
            self.datasets["val"] = self._labelled("val")
        elif stage == "test":
            if not (self._require_root() / "test").is_dir():
                raise UserError(f"{str(self.root / 'test')!r} does not exist; nothing to test on")
            self.datasets["test"] = self._labelled("test")
        elif stage == "predict":
            if self.predict_path is None:
                raise UserError("nothing to predict; pass --data.predict_path IMAGE_OR_FOLDER")
            paths = list_predict_images(self.predict_path)
            bad = self._screen("predict", Path(self.predict_path), paths, [])
            paths = [path for path in paths if path not in bad]
            if not paths:
                raise UserError(f"no readable images under {str(self.predict_path)!r} (see the bad-image report)")
            processes = self.trainer.world_size if self.trainer is not None else 1
            if len(paths) < processes:  # each process predicts its own share; an empty share fails in Lightning
                raise UserError(
                    f"{len(paths)} image(s) to predict on {processes} processes; "
                    f"use --trainer.devices {len(paths)} or fewer, or predict more images"
                )
            self.datasets["predict"] = ImageFiles(paths, None, self.transform(train=False))

    def _model(self) -> TransferClassifier:
        if self.trainer is None or self.trainer.lightning_module is None:
            raise UserError(
                "data.cache_features true extracts features with the model's backbone, so the data "
                "module must run inside a Trainer (lightning-transfer fit/validate/test)"
            )
        return self.trainer.lightning_module

    def _check_frozen_backbone(self) -> None:
        if not self._model().hparams.get("freeze_backbone", True):
            raise UserError(
                "data.cache_features true needs a frozen backbone (its features must not change while "
                "the head trains); pass --model.freeze_backbone true or --data.cache_features false"
            )

    def _use_cached_features(self) -> None:
        """Swap this stage's image sets for their cached features (extracted on a miss), pooled, once.

        Done in the first dataloader hook rather than ``setup``: Lightning restores ``--ckpt_path``
        weights after ``setup``, and the features must come from the weights that will be used.
        Each node's first process extracts and writes; the others wait at a barrier, then read.
        Then torch goes single-threaded until ``teardown``: the head's ops on in-memory features
        are so small that intra-op threads only add synchronization (on a busy 2-core machine,
        head training ran at 8600 samples/s with 1 thread and 113 with 2).
        """
        splits = [split for split, data in self.datasets.items() if isinstance(data, ImageFiles) and split != "predict"]
        if not splits:
            return
        trainer, model = self.trainer, self._model()
        extractor = FeatureExtractor(model.backbone, self.extraction_dtype, self.batch_size, self.num_workers)
        cache = FeatureCache(extractor, self.image_size, self.cache_dir)
        for split in splits:
            images = self.datasets[split]
            features = cache.get(split, images) if trainer.local_rank == 0 else None
            trainer.strategy.barrier(f"lightning_transfer.features.{split}")
            if features is None:
                features = cache.get(split, images)
            self.datasets[split] = FeatureDataset(model.pool(features), images.paths, images.labels)
        if self._threads_before_features is None:
            self._threads_before_features = torch.get_num_threads()
            torch.set_num_threads(1)

    def teardown(self, stage: str) -> None:
        if self._threads_before_features is not None:
            torch.set_num_threads(self._threads_before_features)
            self._threads_before_features = None

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if self.cache_features:
            self._use_cached_features()
        dataset = self.datasets[split]
        in_memory = isinstance(dataset, FeatureDataset)
        batch_size = self._feature_eval_batch_size(split, dataset) if in_memory and not shuffle else self.batch_size
        # features are already in memory: worker processes would only add copies
        num_workers = 0 if in_memory else self.num_workers
        # kept images are shared with forked workers only (Python 3.14 starts them by forkserver)
        shares_decoded = self.keep_decoded and num_workers > 0 and sys.platform == "linux"
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            multiprocessing_context="fork" if shares_decoded else None,
        )

    def _feature_eval_batch_size(self, split: str, features: FeatureDataset) -> int:
        """As many feature rows as fit in FEATURE_EVAL_BATCH_BYTES, unless the trainer limits the
        split's batches (``limit_val_batches 0.5``; ``overfit_batches`` and ``fast_dev_run`` set it
        too): limits count batches of ``batch_size``, and half of one big batch would be none."""
        limit = getattr(self.trainer, f"limit_{split}_batches", 1.0)
        if not (isinstance(limit, float) and limit == 1.0):
            return self.batch_size
        row_bytes = features.pooled[0].nelement() * features.pooled.element_size()
        return max(self.batch_size, FEATURE_EVAL_BATCH_BYTES // row_bytes)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
