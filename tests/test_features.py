"""Fast feature extraction: the on-disk cache (hits, invalidation, damage), the fast path, the full flow."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from safetensors import safe_open

from conftest import REPO, TINY_SIZE, channels_last_kernels, make_tiny_dataset, run_cli
from lightning_transfer import load_model
from lightning_transfer.backbones import Backbone, create_backbone, get_spec
from lightning_transfer.data import ImageFiles, ImageFolderDataModule
from lightning_transfer.features import FeatureCache, FeatureExtractor
from lightning_transfer.model import TransferClassifier
from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.files import default_cache_dir
from lightning_transfer.utils.runtime import memory_format

BACKBONE = "efficientnet_lite0"  # real offline ImageNet weights, and cheap at 64 px
CONFIG = REPO / "configs" / "efficientnet_lite0_feature_extraction.yaml"


def count_forwards(backbone: Backbone) -> list[int]:
    """A list that grows by one per backbone forward call."""
    calls: list[int] = []
    backbone.register_forward_hook(lambda *_: calls.append(1))
    return calls


def image_files(root: Path, image_size: int = TINY_SIZE, split: str = "train") -> ImageFiles:
    data = ImageFolderDataModule(str(root), image_size=image_size, backbone=BACKBONE)
    paths, labels = zip(*data.split_samples(split))
    return ImageFiles(paths, labels, data.transform(train=False))


def weights_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(get_spec(BACKBONE).build_source().state_dict(), path)
    return path


def cache_for(backbone: Backbone, cache_dir: Path, image_size: int = TINY_SIZE, dtype: str = "fp32") -> FeatureCache:
    return FeatureCache(FeatureExtractor(backbone, dtype, batch_size=8), image_size, cache_dir)


@pytest.fixture()
def backbone() -> Backbone:
    return create_backbone(BACKBONE, "imagenet")


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "data", {"train": 3, "val": 2})


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "lightning-transfer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "lightning-transfer"


def fit_on_cached_features(root: Path, weights: Path, cache_dir: Path) -> tuple[ImageFolderDataModule, int]:
    """One in-process fit epoch with ``cache_features``; returns the data module and backbone calls."""
    model = TransferClassifier(
        backbone=BACKBONE, weights=str(weights), class_names=["cat", "dog"], image_size=TINY_SIZE, pool="avg"
    )
    calls = count_forwards(model.backbone)
    data = ImageFolderDataModule(
        str(root), image_size=TINY_SIZE, backbone=BACKBONE, num_workers=0, batch_size=4,
        cache_features=True, cache_dir=str(cache_dir),
    )
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    data.use_features_of(model)
    threads = torch.get_num_threads()
    trainer.fit(model, data)
    assert torch.get_num_threads() == threads, "teardown must restore the thread count"
    return data, len(calls)


def test_second_fit_hits_the_cache_without_backbone_forward(data: Path, tmp_path: Path) -> None:
    weights = weights_file(tmp_path / "weights.pth", seed=0)
    first, first_calls = fit_on_cached_features(data, weights, tmp_path / "cache")
    second, second_calls = fit_on_cached_features(data, weights, tmp_path / "cache")
    assert first_calls > 0
    assert second_calls == 0
    for split in ("train", "val"):
        assert torch.equal(first.datasets[split].pooled, second.datasets[split].pooled)
    item = second.datasets["train"][0]
    assert set(item) == {"pooled_features", "label", "path"} and item["pooled_features"].dtype == torch.float32


def validate_on_cached_features(
    data: Path, cache_dir: Path, **trainer_options
) -> tuple[Trainer, dict, TransferClassifier, ImageFolderDataModule]:
    """``Trainer.validate`` on cached features with ``batch_size`` 3 (the val split has 4 images)."""
    model = TransferClassifier(backbone=BACKBONE, class_names=["cat", "dog"], image_size=TINY_SIZE, pool="avg")
    module = ImageFolderDataModule(
        str(data), image_size=TINY_SIZE, backbone=BACKBONE, num_workers=0, batch_size=3,
        cache_features=True, cache_dir=str(cache_dir),
    )
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, **trainer_options
    )
    module.use_features_of(model)
    (logged,) = trainer.validate(model, module)
    return trainer, logged, model, module


def test_validation_on_cached_features_is_one_batch_with_the_per_sample_loss_and_accuracy(
    data: Path, tmp_path: Path
) -> None:
    """Cached features are evaluated in one batch, whatever ``batch_size`` (which sets training
    batches): the logged val_loss / val_acc are those of every sample's own head output."""
    trainer, logged, model, module = validate_on_cached_features(data, tmp_path / "cache")
    assert len(trainer.val_dataloaders) == 1  # 4 samples at batch_size 3 would be 2 batches

    features = module.datasets["val"]
    labels = torch.tensor(features.labels)
    with torch.no_grad():
        logits = model.eval().logits({"pooled_features": features.pooled})
    assert logged["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert logged["val_acc"] == pytest.approx((logits.argmax(dim=1) == labels).float().mean().item())


def test_a_batch_limit_on_cached_features_counts_batches_of_batch_size(data: Path, tmp_path: Path) -> None:
    """``limit_val_batches 0.5`` means half the batch_size batches: of one big batch it would be none."""
    trainer, _, _, _ = validate_on_cached_features(data, tmp_path / "cache", limit_val_batches=0.5)
    assert len(trainer.val_dataloaders) == 2 and trainer.num_val_batches == [1]


def test_changed_inputs_invalidate_the_cache(backbone: Backbone, data: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    calls = count_forwards(backbone)

    def extracts(cache: FeatureCache, images: ImageFiles) -> bool:
        before = len(calls)
        cache.get("train", images)
        return len(calls) > before

    assert extracts(cache_for(backbone, cache_dir), image_files(data))
    assert not extracts(cache_for(backbone, cache_dir), image_files(data)), "same inputs must hit"
    assert extracts(cache_for(backbone, cache_dir, image_size=72), image_files(data, image_size=72))
    assert extracts(cache_for(backbone, cache_dir, dtype="bf16"), image_files(data))

    touched = next((data / "train" / "cat").glob("*.jpg"))
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert extracts(cache_for(backbone, cache_dir), image_files(data)), "a modified image must miss"

    extra = data / "train" / "cat" / "extra.jpg"
    shutil.copy(next((data / "train" / "dog").glob("*.jpg")), extra)
    assert extracts(cache_for(backbone, cache_dir), image_files(data)), "an added image must miss"
    extra.unlink()
    next((data / "train" / "dog").glob("*.jpg")).unlink()
    assert extracts(cache_for(backbone, cache_dir), image_files(data)), "a removed image must miss"


def test_other_weights_file_invalidates_the_cache(data: Path, tmp_path: Path) -> None:
    images = image_files(data)
    one = create_backbone(BACKBONE, str(weights_file(tmp_path / "one.pth", seed=1)))
    two = create_backbone(BACKBONE, str(weights_file(tmp_path / "two.pth", seed=2)))
    one_calls, two_calls = count_forwards(one), count_forwards(two)
    features_one = cache_for(one, tmp_path / "cache").get("train", images)
    features_two = cache_for(two, tmp_path / "cache").get("train", images)
    assert one_calls and two_calls
    assert not torch.equal(features_one, features_two)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [truncate, flip_last_byte, lambda path: path.write_bytes(b"")])
def test_damaged_cache_file_is_rebuilt_not_loaded(backbone: Backbone, data: Path, tmp_path: Path, damage) -> None:
    images = image_files(data)
    cache = cache_for(backbone, tmp_path / "cache")
    expected = cache.get("train", images)
    (path,) = (tmp_path / "cache").rglob("*.safetensors")
    damage(path)
    calls = count_forwards(backbone)
    with pytest.warns(UserWarning, match="damaged"):
        rebuilt = cache.get("train", images)
    assert calls, "the damaged file must be re-extracted"
    assert torch.equal(rebuilt, expected)
    hits_before = len(calls)
    assert torch.equal(cache.get("train", images), expected)
    assert len(calls) == hits_before, "the rebuilt file must load as a hit"


def test_interrupted_write_leaves_no_cache_file(
    backbone: Backbone, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_written(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("lightning_transfer.features.cache.save_file", half_written)
    with pytest.raises(KeyboardInterrupt):
        cache_for(backbone, tmp_path / "cache").get("train", image_files(data))
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]


def test_fast_path_matches_plain_fp32(backbone: Backbone, tiny_data: Path) -> None:
    images = image_files(tiny_data)
    batch = torch.stack([images[index]["image"] for index in range(len(images))])
    with torch.no_grad():
        plain = backbone.eval()(batch)
    fp32 = FeatureExtractor(backbone, "fp32", batch_size=8)(images)
    fp32_contiguous = FeatureExtractor(backbone, "fp32", batch_size=8, channels_last=False)(images)
    bf16 = FeatureExtractor(backbone, "bf16", batch_size=8)(images)
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    torch.testing.assert_close(fp32, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fp32_contiguous, plain, rtol=1e-4, atol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(bf16.float().flatten(1), plain.flatten(1))
    assert cosine.min() > 0.99, f"bf16 features drift from fp32: min cosine {cosine.min():.4f}"
    assert all(p.is_contiguous() for p in backbone.parameters()), "extraction must restore the layout"


def test_memory_format_restores_each_kernel_even_after_a_1x1_conv() -> None:
    """A 1x1 kernel fits both layouts; the 3x3 kernel after it must still get channels_last back."""
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 3))
    module.to(memory_format=torch.channels_last)
    with memory_format(module, torch.contiguous_format):
        assert channels_last_kernels(module) == 0
    assert channels_last_kernels(module) == 1


def test_extraction_leaves_a_channels_last_model_channels_last(tiny_data: Path) -> None:
    """A model that trains in channels_last (the default) gets its own layout back after extraction."""
    model = TransferClassifier(backbone="vgg16", weights="none", image_size=TINY_SIZE)
    FeatureExtractor(model.backbone, "fp32", batch_size=8, channels_last=False)(image_files(tiny_data))
    assert channels_last_kernels(model.backbone) == 13  # every VGG16 conv


@pytest.mark.parametrize("pool", ["avg", "flatten"])
def test_pooled_features_give_the_heads_own_logits(pool: str) -> None:
    """Pooling the cached features once, up front, then the dense layers == the whole head per batch."""
    torch.manual_seed(0)
    model = TransferClassifier(backbone="vgg16", weights="none", image_size=TINY_SIZE, pool=pool).eval()
    features = torch.randn(7, *model.backbone.output_shape(TINY_SIZE)).to(torch.bfloat16)  # as cached in bf16
    pooled = model.pool(features, chunk_size=3)
    assert pooled.dtype == torch.float32 and pooled.shape[0] == 7
    with torch.no_grad():
        expected = model.head(features.float())
        actual = model.logits({"pooled_features": pooled})
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_checkpoint_from_cached_features_predicts_like_its_head(tiny_data: Path, tmp_path: Path) -> None:
    """The checkpoint is the full model: images -> predict == head(cached features of those images)."""
    cache_dir = tmp_path / "cache"
    fit = run_cli(
        "fit", "--config", str(CONFIG), "--data.root", str(tiny_data), "--data.image_size", str(TINY_SIZE),
        "--data.num_workers", "0", "--data.cache_dir", str(cache_dir), "--data.extraction_dtype", "fp32",
        "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false", "--model.lr", "1e-3",
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "features [train]: cache miss" in fit.stdout and "extracted" in fit.stdout
    checkpoint = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    output = tmp_path / "predictions.csv"
    predict = run_cli(
        "predict", "--ckpt_path", str(checkpoint), "--data.predict_path", str(tiny_data / "val"),
        "--data.num_workers", "0", "--predictions.output", str(output), cwd=tmp_path,
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    with output.open() as handle:
        predicted = {
            str(Path(row["path"]).resolve()): [float(row["p_cat"]), float(row["p_dog"])]
            for row in csv.DictReader(handle)
        }

    (val_file,) = (cache_dir / "features" / BACKBONE).glob("val-*.safetensors")
    with safe_open(str(val_file), framework="pt") as file:
        features = file.get_tensor("features")
        paths = [entry[0] for entry in json.loads(file.metadata()["key"])["files"]]
    model = load_model(checkpoint)
    with torch.no_grad():
        from_features = model.head(features).softmax(dim=1)
    assert sorted(predicted) == sorted(paths)
    expected = torch.stack([from_features[paths.index(path)] for path in predicted])
    torch.testing.assert_close(torch.tensor(list(predicted.values())), expected, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_ddp_extracts_once_and_other_ranks_read_the_cache(tiny_data: Path, tmp_path: Path) -> None:
    result = run_cli(
        "fit", "--config", str(CONFIG), "--data.root", str(tiny_data), "--data.image_size", str(TINY_SIZE),
        "--data.num_workers", "0", "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for split in ("train", "val"):
        assert result.stdout.count(f"features [{split}]: cache miss") == 1, result.stdout
        assert result.stdout.count(f"features [{split}]: cache hit") == 1, result.stdout


@pytest.mark.slow
def test_cache_features_with_augmentation_is_refused_in_one_line(tiny_data: Path, tmp_path: Path) -> None:
    result = run_cli(
        "fit", "--config", str(CONFIG), "--data.root", str(tiny_data), "--data.augment", "true", cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data.cache_features true computes each image's features once, so it cannot be combined "
        "with data.augment true (augmented images change every epoch); set one of them to false"
    )


def test_cache_features_with_trainable_backbone_is_refused(data: Path, tmp_path: Path) -> None:
    model = TransferClassifier(
        backbone=BACKBONE, weights="none", class_names=["cat", "dog"], image_size=TINY_SIZE, freeze_backbone=False
    )
    datamodule = ImageFolderDataModule(
        str(data), image_size=TINY_SIZE, backbone=BACKBONE, cache_features=True, cache_dir=str(tmp_path / "cache")
    )
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False)
    with pytest.raises(UserError, match=r"call datamodule.use_features_of\(model\) before fitting"):
        trainer.fit(model, datamodule)  # the data module is not told whose backbone extracts
    datamodule.use_features_of(model)
    with pytest.raises(UserError, match=r"needs a frozen backbone .* --model.freeze_backbone true"):
        trainer.fit(model, datamodule)
    assert not (tmp_path / "cache").exists(), "nothing may be extracted before refusing"
