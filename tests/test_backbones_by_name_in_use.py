"""Any torchvision or timm model as the backbone, in use: fitting (augmented, cached features), staged
fine-tuning with a resume, visualize, the demo and the command line from such a checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from PIL import Image
from safetensors import safe_open
from torch import nn

from conftest import REPO, TINY_SIZE, run_cli
from lightning_transfer import load_model, read_checkpoint
from lightning_transfer.callbacks.finetuning import Stage, StagedFinetuning
from lightning_transfer.commands.demo import build_demo, predict
from lightning_transfer.commands.visualize import main as visualize
from lightning_transfer.data import ImageFolderDataModule, load_rgb
from lightning_transfer.model import TransferClassifier

BACKBONES = [
    pytest.param("resnet18", marks=pytest.mark.slow),
    "timm/resnet10t",
    pytest.param("mobilenet_v3_small", marks=pytest.mark.slow),
]
"""A torchvision CNN, a timm CNN and a mobile net; the everyday lane runs the timm one."""
TOP_BLOCKS = {"resnet18": ("layer4", "layer3"), "timm/resnet10t": ("layer4", "layer3"),
              "mobilenet_v3_small": ("top", "features_11")}
"""Each backbone's top block and the one below it."""


def classifier(backbone: str, **options) -> TransferClassifier:
    """Random weights; RMSprop at 1e-4 leaves the tiny data's loss and the gradients above zero."""
    torch.manual_seed(0)
    return TransferClassifier(
        backbone=backbone, weights="none", class_names=["cat", "dog"], image_size=TINY_SIZE, lr=1e-4, **options
    )


def data_module(root: Path, backbone: str, **options) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        str(root), image_size=TINY_SIZE, backbone=backbone, num_workers=0, batch_size=4, max_images_per_class=2,
        **options,
    )


def trainer(max_epochs: int = 1, **options) -> Trainer:
    return Trainer(
        max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_train_batches=1, limit_val_batches=0,
        **options,
    )


def parameters(module: nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in module.parameters()]


def changed(before: list[torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(old, new) for old, new in zip(before, module.parameters()))


# ----------------------------------------------------------------------- fit, fine-tune, resume


@dataclass
class Fitted:
    backbone: str
    checkpoint: Path
    head_changed: bool
    backbone_changed: bool


@pytest.fixture(scope="module", params=BACKBONES)
def augmented_fit(request: pytest.FixtureRequest, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    """One augmented training step with the frozen backbone, saved as a checkpoint."""
    model = classifier(request.param)
    head, backbone = parameters(model.head), parameters(model.backbone)
    run = trainer()
    run.fit(model, data_module(tiny_data, request.param, augment=True))
    path = tmp_path_factory.mktemp("fit") / "model.ckpt"
    run.save_checkpoint(path)
    return Fitted(request.param, path, changed(head, model.head), changed(backbone, model.backbone))


def test_one_step_with_augmentation_trains_the_head_only(augmented_fit: Fitted) -> None:
    assert augmented_fit.head_changed and not augmented_fit.backbone_changed
    assert load_model(augmented_fit.checkpoint).hparams.backbone == augmented_fit.backbone


@pytest.mark.parametrize("name", BACKBONES)
def test_one_step_on_cached_features_names_the_cache_by_backbone(name: str, tiny_data: Path, tmp_path: Path) -> None:
    model = classifier(name)
    head = parameters(model.head)
    data = data_module(tiny_data, name, cache_features=True, cache_dir=str(tmp_path))
    data.use_features_of(model)
    trainer().fit(model, data)

    files = sorted((tmp_path / "features").glob("*/*.safetensors"))
    assert {file.parent.name for file in files} == {name.replace("/", "--")}  # one folder, even for timm/NAME
    with safe_open(str(files[0]), framework="pt") as file:
        assert json.loads(file.metadata()["key"])["backbone"] == name
    assert changed(head, model.head)


class BlockSnapshots(Callback):
    """Each epoch's end: the parameters of two blocks."""

    def __init__(self, blocks: tuple[str, str]) -> None:
        self.blocks = blocks
        self.epochs: list[dict[str, list[torch.Tensor]]] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epochs.append({block: parameters(pl_module.backbone.block(block)) for block in self.blocks})


@pytest.mark.parametrize("name", BACKBONES)
def test_staged_finetuning_trains_the_top_block_and_keeps_training_after_a_resume(
    name: str, tiny_data: Path, tmp_path: Path
) -> None:
    top, below = TOP_BLOCKS[name]
    model = classifier(name)
    start = parameters(model.backbone.block(top))
    snapshots = BlockSnapshots((top, below))
    first = trainer(2, callbacks=[StagedFinetuning([Stage(1, 1)]), snapshots])
    first.fit(model, data_module(tiny_data, name))
    first.save_checkpoint(tmp_path / "epoch2.ckpt")

    epoch0, epoch1 = snapshots.epochs
    assert all(torch.equal(a, b) for a, b in zip(start, epoch0[top])), "frozen until its stage"
    assert any(not torch.equal(a, b) for a, b in zip(epoch0[top], epoch1[top]))
    assert all(torch.equal(a, b) for a, b in zip(epoch0[below], epoch1[below]))

    resumed = classifier(name)
    again = trainer(3, callbacks=[StagedFinetuning([Stage(1, 1)])])
    again.fit(resumed, data_module(tiny_data, name), ckpt_path=tmp_path / "epoch2.ckpt")
    assert changed(epoch1[top], resumed.backbone.block(top)), "the resumed run trains the stage on"
    assert not changed(epoch1[below], resumed.backbone.block(below))


# ---------------------------------------------------------------------- visualize, demo, predict


def test_visualize_and_the_demo_work_from_the_checkpoint(
    augmented_fit: Fitted, tiny_data: Path, tmp_path: Path
) -> None:
    image = sorted((tiny_data / "val" / "dog").glob("*.jpg"))[0]
    checkpoint = ["--ckpt_path", str(augmented_fit.checkpoint), "--image", str(image), "--out", str(tmp_path)]
    visualize(["activations", *checkpoint])
    visualize(["gradcam", *checkpoint, "--target", "cat"])
    probabilities = predict(load_model(augmented_fit.checkpoint), load_rgb(image))
    demo = build_demo(augmented_fit.checkpoint, examples=None)

    written = sorted(path.name for path in tmp_path.glob("*.png"))
    assert f"gradcam_{image.stem}_cat_overlay.png" in written
    assert len([name for name in written if name.startswith("activations_")]) == 5  # default: 5 across the depth
    assert all(Image.open(tmp_path / name).size[0] >= TINY_SIZE for name in written)
    assert list(probabilities) == ["cat", "dog"] and sum(probabilities.values()) == pytest.approx(1)
    assert f"`{augmented_fit.backbone}` at {TINY_SIZE} px" in str(demo.config)


# ------------------------------------------------------------------------------ command line


SCHEDULE = """
trainer:
  callbacks:
    - class_path: lightning_transfer.callbacks.StagedFinetuning
      init_args:
        stages: [{epoch: 1, blocks: 1, lr_factor: 0.5}]
"""


@pytest.mark.slow
def test_timm_backbone_fine_tunes_resumes_and_tests_from_the_cli(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "schedule.yaml").write_text(SCHEDULE)
    common = ["--data.root", str(tiny_data), "--data.image_size", str(TINY_SIZE), "--data.num_workers", "0",
              "--data.max_images_per_class", "2", "--data.batch_size", "4", "--trainer.enable_progress_bar", "false"]
    fit = ["fit", "--config", str(REPO / "configs" / "vgg16_fine_tuning.yaml"), "--config", "schedule.yaml",
           "--model.backbone", "timm/resnet10t", "--model.weights", "none", "--model.lr", "1e-4", *common]
    first = run_cli(*fit, "--trainer.max_epochs", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_cli(*fit, "--trainer.max_epochs", "3", "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    tested = run_cli("test", "--ckpt_path", "last", *common, cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]

    assert "unfroze layer4" in first.stdout + first.stderr
    assert "resumed training layer4" in resumed.stdout + resumed.stderr
    before = read_checkpoint(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    after = read_checkpoint(tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt")
    changed_blocks = {key.split(".")[2] for key, value in after["state_dict"].items()
                      if key.startswith("backbone.") and not torch.equal(before["state_dict"][key], value)}
    assert after["epoch"] == 2 and changed_blocks == {"layer4"}
    assert (tmp_path / "lightning_logs" / "version_2" / "test_report.json").is_file()
