"""``ImageFolderDataModule``: image folders -> datasets -> loaders, for every stage and recipe.

Images are decoded to RGB (EXIF orientation applied), squashed to ``image_size`` like Keras'
``target_size``, augmented when asked, then normalized with the backbone's own preprocessing:
either by loader worker processes, image by image, every epoch (``pipeline workers``), or once per
split into a tensor on the model's device that batches are drawn from and augmented on
(``pipeline device``; ``pipeline``). With ``cache_features`` the loaders serve the model's cached,
pooled backbone features instead (``lightning_transfer.features``), from the model's device.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lightning_transfer.backbones import Preprocessing, get_spec
from lightning_transfer.data.datasets import ImageFiles
from lightning_transfer.data.decoded_split import DecodedSplit
from lightning_transfer.data.device_batches import DeviceBatches
from lightning_transfer.data.download import ensure_dataset
from lightning_transfer.data.folders import (
    NO_DATA_ROOT,
    Sample,
    class_names_of,
    list_images,
    list_predict_images,
    non_image_files,
)
from lightning_transfer.data.image_check import OnBadImage, find_bad_images, screen_images
from lightning_transfer.data.pipeline import InputPipeline, Pipeline, Placement
from lightning_transfer.data.sharding import check_shares, evaluation_sampler
from lightning_transfer.data.transforms import augmentation
from lightning_transfer.features import (
    ExtractionDtype,
    FeatureCache,
    FeatureDataset,
    FeatureExtractor,
    FeatureSource,
    check_frozen,
    pooled_features,
)
from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.files import default_cache_dir
from lightning_transfer.utils.run_folder import run_folder

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
EVALUATED_AS = {"val": "validate", "test": "test"}


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
        pipeline: ``workers``: loader processes decode and augment every image every epoch;
            ``device``: each split decoded once into a uint8 tensor on the model's device, batches
            drawn and augmented there (each DDP process holds its own shard); ``auto``: ``device``
            on a CUDA GPU, or for fast feature extraction, when it fits, else ``workers``. Not for predict.
        device_memory_fraction: the device pipeline's budget, a fraction of the memory free on the
            model's device (host memory on the CPU).
        keep_decoded: retired; ``pipeline device`` keeps every split decoded in memory.
        url: archive (zip or tar) to download and extract into ``root`` when ``root`` has no
            ``train/`` yet (e.g. ``lightning_transfer.data.download.CATS_AND_DOGS_FILTERED_URL``).
        md5: the archive's MD5 checksum; a download that does not match is refused.
        on_bad_image: what to do with files that do not decode, found by a check before the run
            (report in the log folder): ``skip`` them with a warning, or stop with an ``error``.
        cache_features: fast feature extraction: run the model's frozen backbone once over each
            split, cache the features on disk and train the head on them (needs ``augment false``).
            The model is handed over with :meth:`use_features_of` (the CLI does it).
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
        pipeline: Pipeline = "auto",
        device_memory_fraction: float = 0.5,
        keep_decoded: bool | None = None,
        url: str | None = None,
        md5: str | None = None,
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
        self.input_pipeline = InputPipeline(pipeline, device_memory_fraction, keep_decoded)
        self.url = url
        self.md5 = md5
        self.on_bad_image = on_bad_image
        self.cache_features = cache_features
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.extraction_dtype = extraction_dtype
        self.datasets: dict[str, Dataset] = {}
        self.feature_source: FeatureSource | None = None
        self._threads_before_features: int | None = None

    def use_features_of(self, model: FeatureSource) -> None:
        """Serve ``model``'s cached backbone features (``cache_features``) instead of images.

        The features are extracted with the model's backbone as it is when the first loader is
        built, that is after Lightning has restored ``--ckpt_path`` weights.
        """
        if not isinstance(model, FeatureSource):
            raise TypeError(f"{type(model).__name__} has no backbone and pool(); it cannot provide features")
        self.feature_source = model

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
        if self.root is not None:
            ensure_dataset(self.root, self.url, self.md5)
        stage = self.trainer.state.fn if self.trainer is not None else "fit"
        for split in STAGE_SPLITS.get(stage, ()):
            find_bad_images([path for path, _ in self._listed_samples(split)])
        if stage == "predict" and self.predict_path is not None:
            find_bad_images(list_predict_images(self.predict_path))

    def transform(self, train: bool) -> v2.Compose:
        return self.preprocessing.transform(self.image_size, augmentation() if train and self.augment else None)

    def _listed_samples(self, split: str) -> list[Sample]:
        split_dir = self._require_root() / split
        if split == "test" and not split_dir.is_dir():
            raise UserError(f"{str(split_dir)!r} does not exist: `test` needs a test/ split beside train/ and val/ "
                            "(`lightning-transfer data prepare` makes one)")
        return list_images(split_dir, self.class_names, self.max_images_per_class)

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
        """Unreadable images among ``paths``; the report goes to the run's folder, from one process
        (``run_folder`` is a collective call, so every process makes it)."""
        trainer = self.trainer
        folder = run_folder(trainer) if trainer is not None else Path()
        report = folder.absolute() / f"bad_images_{split}.txt"
        write = trainer is None or trainer.is_global_zero
        return screen_images(str(where), paths, ignored, self.on_bad_image, report, write)

    def _labelled(self, split: str) -> ImageFiles:
        samples = self.split_samples(split)
        if split in EVALUATED_AS:  # one unrepeated share per process (evaluation_sampler)
            check_shares(len(samples), self.trainer, EVALUATED_AS[split])
        paths, labels = zip(*samples)
        return ImageFiles(paths, labels, self.transform(train=split == "train"))

    def setup(self, stage: str) -> None:
        if self.cache_features and stage != "predict":
            check_frozen(self._feature_source())
        if stage == "fit":
            self.datasets["train"] = self._labelled("train")
            self.datasets["val"] = self._labelled("val")
        elif stage == "validate":
            self.datasets["val"] = self._labelled("val")
        elif stage == "test":
            self.datasets["test"] = self._labelled("test")
        elif stage == "predict":
            if self.predict_path is None:
                raise UserError("nothing to predict; pass --data.predict_path IMAGE_OR_FOLDER")
            paths = list_predict_images(self.predict_path)
            bad = self._screen("predict", Path(self.predict_path), paths, [])
            paths = [path for path in paths if path not in bad]
            if not paths:
                raise UserError(f"no readable images under {str(self.predict_path)!r} (see the bad-image report)")
            check_shares(len(paths), self.trainer, "predict")  # Lightning's predict shares are unrepeated too
            self.datasets["predict"] = ImageFiles(paths, None, self.transform(train=False))

    def _feature_source(self) -> FeatureSource:
        if self.feature_source is None:
            raise UserError(
                "data.cache_features true extracts features with the model's backbone; call "
                "datamodule.use_features_of(model) before fitting (lightning-transfer does this itself)"
            )
        return self.feature_source

    def _use_cached_features(self) -> None:
        """Swap this stage's image sets for their cached features (extracted on a miss), pooled, once,
        and each process's shard of them on the model's device.

        Done in the first dataloader hook rather than ``setup``: Lightning restores ``--ckpt_path``
        weights after ``setup``, and the features must come from the weights that will be used.
        Then torch goes single-threaded until ``teardown``: the head's ops on in-memory features are
        so small that intra-op threads only add synchronization (docs/performance.md).
        """
        splits = self._image_splits()
        if not splits:
            return
        source, trainer, placement = self._feature_source(), self.trainer, Placement.of(self.trainer)
        decoded = self._pipeline() == "device"
        extractor = FeatureExtractor(source.backbone, self.extraction_dtype, self.batch_size,
                                     0 if decoded else self.num_workers)
        cache = FeatureCache(extractor, self.image_size, self.cache_dir)
        for split, files in splits.items():
            # a decoded split is the whole split, decoded on a cache miss only, and freed before the next
            images = DecodedSplit(files.paths, files.labels, self.preprocessing, self.image_size,
                                  placement.device, name=split) if decoded else files
            features = pooled_features(source, split, images, cache, trainer.local_rank == 0,
                                       trainer.strategy.barrier)
            shard = placement.shard(len(features), evaluation=split in EVALUATED_AS)
            self.datasets[split] = features.subset(shard, placement.device)
        if self._threads_before_features is None:
            self._threads_before_features = torch.get_num_threads()
            torch.set_num_threads(1)

    def teardown(self, stage: str) -> None:
        self.input_pipeline.reset()
        if self._threads_before_features is not None:
            torch.set_num_threads(self._threads_before_features)
            self._threads_before_features = None

    def _image_splits(self) -> dict[str, ImageFiles]:
        return {split: images for split, images in self.datasets.items()
                if isinstance(images, ImageFiles) and split != "predict"}

    def _pipeline(self) -> str:
        counts = [len(images) for images in self._image_splits().values()]
        return self.input_pipeline.choose(self.trainer, counts, self.image_size, extraction=self.cache_features)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader | DeviceBatches:
        if self.cache_features:
            self._use_cached_features()
        dataset = self.datasets[split]
        if isinstance(dataset, FeatureDataset):
            limit = getattr(self.trainer, f"limit_{split}_batches", 1.0)
            batch_size = self.batch_size if shuffle else dataset.eval_batch_size(self.batch_size, limit)
            return DeviceBatches(dataset, batch_size, shuffle)
        if split != "predict" and self._pipeline() == "device":
            return self.input_pipeline.batches(
                dataset.paths, dataset.labels, split, Placement.of(self.trainer), self.preprocessing,
                self.image_size, self.batch_size, shuffle, self.augment and split == "train",
                evaluation=split in EVALUATED_AS,
            )
        # keywords only: Lightning rebuilds DataLoaders (predict, DDP) from the arguments they were given
        return DataLoader(
            dataset=dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=evaluation_sampler(dataset, self.trainer) if split in EVALUATED_AS else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        # Lightning unshuffles only DataLoaders for --trainer.overfit_batches; DeviceBatches too
        return self._loader("train", shuffle=not (self.trainer is not None and self.trainer.overfit_batches))

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
