"""The device pipeline (``data.pipeline device``) with the model on the CPU: the same code as on a
GPU, decoding with PIL (and, forced, with torchvision's batched JPEG decoder), so CI covers it."""

from __future__ import annotations

import csv
import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torchvision
from kornia.augmentation import AugmentationSequential
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from test_reliability_images import make_broken, make_unusual
from torch.utils.data import DistributedSampler

from conftest import REPO, make_tiny_dataset
from lightning_transfer import ImageFolderDataModule, TransferClassifier, UserError
from lightning_transfer.backbones import create_backbone, get_spec
from lightning_transfer.callbacks import TestReport, last_epoch_checkpoint
from lightning_transfer.data import ImageFiles
from lightning_transfer.data.decoded_split import DecodedSplit
from lightning_transfer.data.device_augment import batch_transform
from lightning_transfer.data.device_batches import DeviceBatches
from lightning_transfer.data.pipeline import choose_pipeline, least_free_memory
from lightning_transfer.data.sharding import shard_indices
from lightning_transfer.features import FeatureCache, FeatureExtractor

GB = 2**30


def data_module(root: Path, pipeline: str, **options) -> ImageFolderDataModule:
    module = ImageFolderDataModule(str(root), image_size=48, num_workers=0, batch_size=4, pipeline=pipeline, **options)
    module.setup("fit")
    return module


def epoch(loader) -> list[dict]:
    return [{key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
            for batch in loader]


def test_without_augmentation_the_device_pipeline_gives_the_workers_tensors(tiny_data: Path) -> None:
    workers, device = data_module(tiny_data, "workers"), data_module(tiny_data, "device")
    for split in ("train", "val"):
        loader = device.val_dataloader() if split == "val" else device._loader("train")  # in order
        assert isinstance(loader, DeviceBatches)
        reference = [workers.datasets[split][index] for index in range(len(workers.datasets[split]))]
        images = torch.cat([batch["image"] for batch in loader])
        labels = torch.cat([batch["label"] for batch in loader])
        torch.testing.assert_close(images, torch.stack([item["image"] for item in reference]), rtol=0, atol=1e-6)
        assert labels.tolist() == [item["label"] for item in reference]


def test_the_batched_jpeg_decoder_leaves_unusual_files_to_pil(tmp_path: Path, monkeypatch) -> None:
    """What nvjpeg gets on a GPU, torchvision's CPU decoder gets here: plain JPEGs decode to PIL's
    pixels, and EXIF-rotated and CMYK JPEGs (which it would get wrong) and PNGs go through ``load_rgb``."""
    folder = make_tiny_dataset(tmp_path / "photos", {"train": 3}) / "train" / "cat"
    make_unusual(folder)
    paths = sorted(folder.iterdir())
    batched: list[int] = []
    decode_jpeg = torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg",
                        lambda data, **options: batched.append(len(data)) or decode_jpeg(data, **options))
    preprocessing = get_spec("vgg16").preprocessing
    pil = DecodedSplit(paths, [0] * len(paths), preprocessing, 40, torch.device("cpu")).pixels
    assert batched == []
    both = DecodedSplit(paths, [0] * len(paths), preprocessing, 40, torch.device("cpu"), batched_jpeg=True).pixels
    assert batched == [4]  # the 3 photos and gray.jpg
    difference = (pil.int() - both.int()).abs().amax(dim=(1, 2, 3))
    assert difference.max() <= 2, dict(zip((path.name for path in paths), difference.tolist()))


def test_two_images_in_one_batch_get_different_augmentations() -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 48, 48), dtype=torch.uint8)
    augment = batch_transform(get_spec("vgg16").preprocessing, augment=True, device=torch.device("cpu"))
    plain = batch_transform(get_spec("vgg16").preprocessing, augment=False, device=torch.device("cpu"))
    first, second = augment(image.expand(2, -1, -1, -1))
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, plain(image)[0])
    (kornia,) = [step for step in augment.transforms if isinstance(step, AugmentationSequential)]
    rotations = kornia[0]._params["angle"]  # RandomAffine's per-sample draws of that call
    assert rotations.shape == (2,) and rotations[0] != rotations[1] and rotations.abs().max() <= 40


def test_a_seed_reproduces_an_epoch_and_each_epoch_has_a_new_order(tiny_data: Path) -> None:
    def two_epochs() -> tuple[list[dict], list[dict]]:
        seed_everything(3)
        loader = data_module(tiny_data, "device", augment=True).train_dataloader()
        return epoch(loader), epoch(loader)

    first, second = two_epochs()
    again, _ = two_epochs()
    assert len(first) == 4 and all(len(batch["label"]) == 4 for batch in first)
    for batch, repeated in zip(first, again):
        assert torch.equal(batch["image"], repeated["image"]) and torch.equal(batch["label"], repeated["label"])
    order = torch.cat([batch["label"] for batch in first])  # 8 cats and 8 dogs: 1 in 12870 to repeat
    assert not torch.equal(order, torch.cat([batch["label"] for batch in second]))


def test_shards_split_a_dataset_like_the_samplers() -> None:
    assert shard_indices(10, 0, 1, evaluation=False) == list(range(10))
    assert shard_indices(10, 0, 2, evaluation=False) == [0, 2, 4, 6, 8]
    assert shard_indices(10, 1, 2, evaluation=False) == [1, 3, 5, 7, 9]
    assert shard_indices(5, 0, 2, evaluation=False) == [0, 2, 4]
    assert shard_indices(5, 1, 2, evaluation=False) == [1, 3, 0]  # training: padded, equal steps
    assert shard_indices(5, 1, 2, evaluation=True) == [1, 3]  # evaluation: every image once
    for rank in (0, 1):  # the same shares as the evaluation sampler of DataLoaders
        sampler = UnrepeatedDistributedSampler(range(5), num_replicas=2, rank=rank, shuffle=False)
        assert shard_indices(5, rank, 2, evaluation=True) == list(sampler)
    for count, processes in [(7, 2), (2, 8), (3, 8), (1, 3)]:  # and the training sampler's, fewer images too
        for rank in range(processes):
            sampler = DistributedSampler(range(count), num_replicas=processes, rank=rank, shuffle=False)
            assert shard_indices(count, rank, processes, evaluation=False) == list(sampler)


def test_auto_takes_the_device_when_it_fits_and_says_why() -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    choice, message = choose_pipeline("auto", cuda, needed=GB, fraction=0.5, free=8 * GB, extraction=False)
    assert choice == "device" and message == (
        "data.pipeline auto: device (training reads images decoded once on cuda:0; "
        "1,024 MB of decoded images, budget 4,096 MB)"
    )
    choice, message = choose_pipeline("auto", cuda, needed=5 * GB, fraction=0.5, free=8 * GB, extraction=False)
    assert choice == "workers" and message == (
        "data.pipeline auto: workers (5,120 MB of decoded images, budget 4,096 MB: more than "
        "data.device_memory_fraction 0.5 of the 8,192 MB free on cuda:0)"
    )
    choice, message = choose_pipeline("auto", cpu, needed=GB, fraction=0.5, free=8 * GB, extraction=False)
    assert choice == "workers" and message.startswith("data.pipeline auto: workers (the model is on cpu;")
    choice, message = choose_pipeline("auto", cpu, needed=GB, fraction=0.5, free=8 * GB, extraction=True)
    assert choice == "device" and message == (  # fast feature extraction on a CPU: every core for the model
        "data.pipeline auto: device (feature extraction reads images decoded once on cpu; "
        "1,024 MB of decoded images, budget 4,096 MB)"
    )
    assert choice_of("workers", cuda) == "workers" and choice_of("device", cpu) == "device"


def choice_of(requested: str, device: torch.device) -> str:
    return choose_pipeline(requested, device, needed=GB, fraction=0.5, free=8 * GB, extraction=False)[0]


def test_an_explicit_device_pipeline_that_does_not_fit_stops_in_one_line() -> None:
    with pytest.raises(UserError) as caught:
        choose_pipeline("device", torch.device("cuda", 0), needed=5 * GB, fraction=0.5, free=8 * GB, extraction=False)
    assert str(caught.value) == (
        "data.pipeline device needs 5,120 MB on cuda:0 for the decoded images, more than its budget of 4,096 MB "
        "(data.device_memory_fraction 0.5 of 8,192 MB free); lower data.image_size or data.max_images_per_class, "
        "raise data.device_memory_fraction, or use data.pipeline workers"
    )
    assert choose_pipeline("device", torch.device("cpu"), GB, 0.5, None, False) == ("device", None)  # unknown: no limit


def test_a_device_pipeline_too_big_for_the_host_stops_before_decoding(tiny_data, monkeypatch) -> None:
    monkeypatch.setattr("lightning_transfer.data.pipeline.free_memory", lambda device: 1000)
    module = data_module(tiny_data, "device")
    with pytest.raises(UserError, match=r"needs 0.2 MB on cpu .* budget of 0.0 MB"):
        module.train_dataloader()


class GatheringTrainer:
    """Two processes, as ``least_free_memory`` sees them: the other one reports ``other_free``."""

    def __init__(self, other_free: int) -> None:
        self.world_size = 2
        self.strategy = self
        self.other_free = other_free

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack([tensor, torch.tensor(self.other_free)])


def test_every_process_budgets_with_the_least_free_memory(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr("lightning_transfer.data.pipeline.free_memory", lambda device: 8 * GB)
    assert least_free_memory(GatheringTrainer(3 * GB), cpu) == 3 * GB
    assert least_free_memory(GatheringTrainer(torch.iinfo(torch.int64).max), cpu) == 8 * GB
    monkeypatch.setattr("lightning_transfer.data.pipeline.free_memory", lambda device: None)
    assert least_free_memory(GatheringTrainer(torch.iinfo(torch.int64).max), cpu) is None  # unknown everywhere


def test_keep_decoded_is_retired_with_a_pointer_to_the_device_pipeline(tiny_data: Path) -> None:
    with pytest.raises(UserError, match=r"data.keep_decoded is retired: use --data.pipeline device"):
        ImageFolderDataModule(str(tiny_data), keep_decoded=True)
    ImageFolderDataModule(str(tiny_data), keep_decoded=False)  # the old default still parses


def test_bad_images_are_left_out_of_the_device_pipeline_or_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))
    monkeypatch.chdir(tmp_path)
    root = make_tiny_dataset(tmp_path / "messy", {"train": 4, "val": 2})
    cat = root / "train" / "cat"
    broken = make_broken(cat, next(cat.glob("cat.*.jpg")))
    with pytest.warns(UserWarning, match="3 unreadable images"):
        module = data_module(root, "device", augment=True)
    loader = module.train_dataloader()
    names = {Path(path).name for path in loader.dataset.paths}
    assert len(names) == 8 and not names & set(broken)
    assert sum(len(batch["label"]) for batch in loader) == 8
    with pytest.raises(UserError, match="3 unreadable images"):
        data_module(root, "device", on_bad_image="error")


def test_extraction_from_the_decoded_split_gives_the_loaders_features(tiny_data: Path) -> None:
    module = data_module(tiny_data, "workers")
    images: ImageFiles = module.datasets["val"]
    backbone = create_backbone("efficientnet_lite0", "none")
    extractor = FeatureExtractor(backbone, "fp32", batch_size=3)
    decoded = DecodedSplit(images.paths, images.labels, module.preprocessing, 48, torch.device("cpu"))
    assert repr(decoded.transform) == repr(images.transform)  # the same feature-cache key
    torch.testing.assert_close(extractor(decoded), extractor(images), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cache_features", [False, True])
def test_fit_with_the_device_pipeline_on_the_cpu(tiny_data: Path, tmp_path: Path, cache_features: bool) -> None:
    model = TransferClassifier(backbone="efficientnet_lite0", weights="none", class_names=["cat", "dog"],
                               image_size=32, pool="avg", head_hidden=8)
    module = ImageFolderDataModule(str(tiny_data), image_size=32, batch_size=4, num_workers=0, pipeline="device",
                                   backbone="efficientnet_lite0", augment=not cache_features,
                                   cache_features=cache_features, cache_dir=str(tmp_path / "cache"))
    module.use_features_of(model)
    trainer = Trainer(accelerator="cpu", fast_dev_run=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(model, module)
    assert isinstance(trainer.train_dataloader, DeviceBatches)
    assert Path(trainer.val_dataloaders.dataset[0]["path"]).is_file()  # what GradCamLogger reads
    assert trainer.fit_loop.epoch_loop.global_step == 2
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
    (validated,) = trainer.validate(model, module, verbose=False)  # loaders built under inference mode
    assert 0 <= validated["val_acc"] <= 1
    report = TestReport(output_dir=str(tmp_path / "report"), top_losses=2)  # reads each batch's paths
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[report]).test(model, module, verbose=False)
    assert isinstance(module.test_dataloader(), DeviceBatches)
    assert report.predictions.paths == sorted(str(path) for path in (tiny_data / "test").glob("*/*.jpg"))
    assert len(list(csv.DictReader((tmp_path / "report" / "test_top_losses.csv").open()))) == 2


def test_extraction_frees_each_decoded_split_before_decoding_the_next(tiny_data: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """``decoded_need`` budgets fast feature extraction one whole split at a time."""
    extracted, earlier_alive = [], []
    extract = FeatureCache.get

    def watched(self, split: str, images) -> torch.Tensor:
        gc.collect()
        earlier_alive.append([split_ref() is not None for split_ref in extracted])
        extracted.append(weakref.ref(images))
        return extract(self, split, images)

    monkeypatch.setattr(FeatureCache, "get", watched)
    model = TransferClassifier(backbone="efficientnet_lite0", weights="none", class_names=["cat", "dog"],
                               image_size=32, pool="avg", head_hidden=8)
    module = ImageFolderDataModule(str(tiny_data), image_size=32, batch_size=4, num_workers=0, pipeline="device",
                                   backbone="efficientnet_lite0", cache_features=True,
                                   cache_dir=str(tmp_path / "cache"))
    module.use_features_of(model)
    Trainer(accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False,
            enable_model_summary=False).fit(model, module)
    assert earlier_alive == [[], [False]]  # train, then val with train's pixels gone


def test_overfit_batches_repeats_the_same_device_batches_every_epoch(tiny_data: Path) -> None:
    class Record(Callback):
        def __init__(self) -> None:
            self.batches: list[torch.Tensor] = []

        def on_train_batch_start(self, trainer, pl_module, batch: dict, batch_idx: int) -> None:
            self.batches.append(batch["image"].clone())

    seed_everything(0)
    model = TransferClassifier(backbone="efficientnet_lite0", weights="none", class_names=["cat", "dog"],
                               image_size=32, pool="avg", head_hidden=8)
    module = ImageFolderDataModule(str(tiny_data), image_size=32, batch_size=4, num_workers=0, pipeline="device",
                                   backbone="efficientnet_lite0")
    record = Record()
    Trainer(accelerator="cpu", overfit_batches=1, max_epochs=3, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[record]).fit(model, module)
    assert len(record.batches) == 3
    for batch in record.batches[1:]:
        torch.testing.assert_close(batch, record.batches[0], rtol=0, atol=0)


def test_a_device_pipeline_fit_resumes_from_its_last_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    def fit(epochs: int, ckpt_path: Path | None = None) -> Trainer:
        seed_everything(0)
        model = TransferClassifier(backbone="efficientnet_lite0", weights="none", class_names=["cat", "dog"],
                                   image_size=32, pool="avg", head_hidden=8)
        module = ImageFolderDataModule(str(tiny_data), image_size=32, batch_size=8, num_workers=0, augment=True,
                                       pipeline="device", backbone="efficientnet_lite0")
        trainer = Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[last_epoch_checkpoint(tmp_path)])
        trainer.fit(model, module, ckpt_path=ckpt_path)
        return trainer

    fit(1)
    resumed = fit(2, tmp_path / "last.ckpt")
    assert resumed.current_epoch == 2 and resumed.global_step == 4  # 16 images at batch 8, two epochs in all
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 1


DDP_SCRIPT = """
import json, sys
from pathlib import Path
from lightning import Callback, Trainer, seed_everything
from lightning_transfer import ImageFolderDataModule, TransferClassifier

class Record(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        loaders = {"train": trainer.train_dataloader, "val": trainer.val_dataloaders}
        record = {split: {"type": type(loader).__name__, "paths": [str(p) for p in loader.dataset.paths]}
                  for split, loader in loaders.items()}
        Path(sys.argv[2], f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

if __name__ == "__main__":
    seed_everything(0)
    data = ImageFolderDataModule(sys.argv[1], image_size=32, batch_size=4, num_workers=0, pipeline="device",
                                 augment=True, backbone="efficientnet_lite0")
    model = TransferClassifier(backbone="efficientnet_lite0", weights="none", class_names=["cat", "dog"],
                               image_size=32, pool="avg", head_hidden=8)
    Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()]).fit(model, data)
"""


@pytest.mark.slow
def test_ddp_processes_each_hold_their_own_shard(tiny_data: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tiny_data), str(tmp_path)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for split, count in (("train", 16), ("val", 8)):
        shards = [set(rank[split]["paths"]) for rank in ranks]
        assert all(rank[split]["type"] == "DeviceBatches" for rank in ranks)
        assert len(shards[0]) == len(shards[1]) == count // 2
        assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == count
