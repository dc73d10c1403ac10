"""Staged fine-tuning: schedule, trainable set, param groups, BatchNorm, and resume via the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import REPO, TINY_SIZE, run_cli
from lightning_transfer import load_model, read_checkpoint
from lightning_transfer.backbones import create_backbone
from lightning_transfer.callbacks.finetuning import Stage, StagedFinetuning, resolve_blocks
from lightning_transfer.data import ImageFolderDataModule
from lightning_transfer.model import TransferClassifier
from lightning_transfer.utils.errors import UserError

LR = 1e-3


# ------------------------------------------------------------------------------------ schedule


def test_blocks_by_name_and_counted_from_the_top() -> None:
    backbone = create_backbone("vgg16", "none")
    stages = [Stage(1, 1), Stage(2, ["block3"]), Stage(3, 1)]
    assert resolve_blocks(backbone, stages) == [["block5"], ["block3"], ["block4"]]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([Stage(1, ["block9"])], "valid blocks: block1, block2, block3, block4, block5"),
        ([Stage(1, ["block5"]), Stage(2, ["block5"])], "more than one stage"),
        ([Stage(1, 5), Stage(2, 1)], "0 of backbone 'vgg16' are left"),
    ],
)
def test_bad_blocks_are_refused(stages: list[Stage], message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_blocks(create_backbone("vgg16", "none"), stages)


def test_stages_must_be_in_epoch_order() -> None:
    with pytest.raises(UserError, match="epoch order"):
        StagedFinetuning([Stage(3, 1), Stage(1, 1)])


# ------------------------------------------------------------------ one uninterrupted run, in-process


def names_of(model: nn.Module, prefix: str, batchnorm: bool | None = None) -> set[str]:
    """Parameter names under ``prefix``; only BatchNorm ones (True), only others (False), or all."""
    names = set()
    for module_name, module in model.named_modules():
        if not module_name.startswith(prefix):
            continue
        if batchnorm is not None and isinstance(module, _BatchNorm) != batchnorm:
            continue
        names |= {f"{module_name}.{name}" for name, _ in module.named_parameters(recurse=False)}
    return names


class Recorder(Callback):
    """Per epoch, as the first training batch sees it: trainable names, param groups, BN modes."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: TransferClassifier, batch: dict, batch_idx: int
    ) -> None:
        if batch_idx:
            return
        name_of = {id(p): name for name, p in pl_module.named_parameters()}
        backbone = pl_module.backbone
        groups = trainer.optimizers[0].param_groups
        self.epochs.append({
            "trainable": {name for name, p in pl_module.named_parameters() if p.requires_grad},
            "groups": [(g.get("name"), g["lr"], {name_of[id(p)] for p in g["params"]}) for g in groups],
            "bn_training": {
                block: any(m.training for m in backbone.block(block).modules() if isinstance(m, _BatchNorm))
                for block in ("block6", "block7", "top")
            },
        })


@pytest.mark.parametrize("train_bn", [False, True])
def test_uninterrupted_run_follows_the_schedule(tiny_data: Path, train_bn: bool) -> None:
    model = TransferClassifier(
        backbone="efficientnet_lite0", weights="none", class_names=["cat", "dog"], image_size=TINY_SIZE,
        pool="avg", lr=LR,
    )
    block6_stats = model.backbone.block("block6")[0].bn1.running_mean.clone()
    data = ImageFolderDataModule(
        root=str(tiny_data), image_size=TINY_SIZE, batch_size=4, num_workers=0, backbone="efficientnet_lite0",
        max_images_per_class=2,
    )
    recorder = Recorder()
    finetuning = StagedFinetuning([Stage(1, 1, 0.1), Stage(2, ["block7"], 0.05)], train_bn=train_bn)
    trainer = Trainer(
        max_epochs=3, callbacks=[finetuning, recorder], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )
    trainer.fit(model, data)

    bn = None if train_bn else False  # which parameters of an unfrozen block train
    head = names_of(model, "head")
    top, block7 = names_of(model, "backbone.body.top", bn), names_of(model, "backbone.body.block7", bn)
    expected = [
        ([("head", LR, head)], {"block6": False, "block7": False, "top": False}),
        ([("head", LR, head), ("top", LR * 0.1, top)], {"block6": False, "block7": False, "top": train_bn}),
        (
            [("head", LR, head), ("top", LR * 0.1, top), ("block7", LR * 0.05, block7)],
            {"block6": False, "block7": train_bn, "top": train_bn},
        ),
    ]
    assert len(recorder.epochs) == 3
    for epoch, (seen, (groups, bn_training)) in enumerate(zip(recorder.epochs, expected)):
        assert seen["groups"] == groups, f"epoch {epoch}"
        assert seen["trainable"] == set().union(*(names for _, _, names in groups)), f"epoch {epoch}"
        assert seen["bn_training"] == bn_training, f"epoch {epoch}"
    # frozen BatchNorm kept its statistics (eval mode all along)
    assert torch.equal(model.backbone.block("block6")[0].bn1.running_mean, block6_stats)


def test_refuses_cached_features(tiny_data: Path) -> None:
    model = TransferClassifier(
        backbone="vgg16", weights="none", class_names=["cat", "dog"], image_size=TINY_SIZE
    )
    data = ImageFolderDataModule(root=str(tiny_data), image_size=TINY_SIZE, num_workers=0)
    data.cache_features = True  # the fast-feature-extraction switch
    trainer = Trainer(
        max_epochs=1, callbacks=[StagedFinetuning([Stage(1, 1)])], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    with pytest.raises(UserError, match="cache_features"):
        trainer.fit(model, data)


# ------------------------------------------------------------------------- init_from a checkpoint


def test_init_from_copies_weights_and_is_not_needed_later(tiny_checkpoint: Path, tmp_path: Path) -> None:
    trained = load_model(tiny_checkpoint)
    hparams = read_checkpoint(tiny_checkpoint)["hyper_parameters"]
    copy = tmp_path / "head.ckpt"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    # weights=imagenet is not fetched (VGG16's could not be): init_from supplies every weight
    model = TransferClassifier(**{**hparams, "weights": "imagenet", "init_from": str(copy)})
    assert all(torch.equal(value, trained.state_dict()[key]) for key, value in model.state_dict().items())
    assert "init_from" not in model.hparams
    copy.unlink()
    TransferClassifier(**{**model.hparams, "weights": "none"})  # as load_model rebuilds: no init_from file


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"class_names": ["cat", "fox"]}, "class_names=\\['cat', 'dog'\\]"),
        ({"head_hidden": 8}, "head_hidden=256.*this model: head_hidden=8"),
    ],
)
def test_init_from_refuses_another_model(tiny_checkpoint: Path, change: dict, message: str) -> None:
    hparams = read_checkpoint(tiny_checkpoint)["hyper_parameters"]
    with pytest.raises(UserError, match=message):
        TransferClassifier(**{**hparams, **change, "weights": "none", "init_from": str(tiny_checkpoint)})


# ------------------------------------------------------------------------ interrupted runs, via CLI

SCHEDULE = """
trainer:
  callbacks:
    - class_path: lightning_transfer.callbacks.StagedFinetuning
      init_args:
        stages: [{epoch: 2, blocks: [block5], lr_factor: 0.5}, {epoch: 3, blocks: 1, lr_factor: 0.1}]
"""
FINAL_EPOCH = 3
CLI_LR = 1e-4
"""Small enough that the 4 generated training images are not fit to a zero loss (zero gradients) by epoch 3."""


def fit(workdir: Path, data: Path, max_epochs: int, *extra: str) -> str:
    (workdir / "schedule.yaml").write_text(SCHEDULE)
    result = run_cli(
        "fit", "--config", str(REPO / "configs" / "vgg16_fine_tuning.yaml"), "--config", "schedule.yaml",
        "--data.root", str(data), "--data.image_size", str(TINY_SIZE), "--data.num_workers", "0",
        "--data.max_images_per_class", "2", "--data.batch_size", "4", "--model.weights", "none",
        "--model.lr", str(CLI_LR), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.max_epochs", str(max_epochs), *extra, cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def last_checkpoint(workdir: Path, version: int) -> dict:
    return read_checkpoint(workdir / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt")


def groups_of(checkpoint: dict) -> list[tuple]:
    """(name, lr, parameter names) per optimizer param group, names from the callback's record."""
    lrs = [(g["name"], g["lr"]) for g in checkpoint["optimizer_states"][0]["param_groups"]]
    recorded = checkpoint["callbacks"]["StagedFinetuning"]["internal_optimizer_metadata"][0]
    return [(*lr, tuple(group["params"])) for lr, group in zip(lrs, recorded, strict=True)]


def changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"]
               if k.startswith(prefix))


@pytest.fixture(scope="module")
def runs(tiny_data: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted run, and the same run stopped twice and resumed with --ckpt_path last.

    Both start from a feature-extraction checkpoint (``--model.init_from``), which is deleted after
    the first stop: resuming must not read it again.
    """
    uninterrupted = tmp_path_factory.mktemp("uninterrupted")
    fit(uninterrupted, tiny_data, FINAL_EPOCH + 1, "--model.init_from", str(tiny_checkpoint))
    resumed = tmp_path_factory.mktemp("resumed")
    head = resumed / "head.ckpt"
    head.write_bytes(tiny_checkpoint.read_bytes())
    init = ("--model.init_from", str(head))
    logs = [fit(resumed, tiny_data, 1, *init)]  # stopped before block5's stage (epoch 2)
    head.unlink()
    logs.append(fit(resumed, tiny_data, 3, *init, "--ckpt_path", "last"))  # from epoch 1 into the stage
    logs.append(fit(resumed, tiny_data, FINAL_EPOCH + 1, *init, "--ckpt_path", "last"))  # at block4's stage
    return {
        "workdir": resumed,
        "init": init,
        "uninterrupted": last_checkpoint(uninterrupted, 0),
        "resumed": [last_checkpoint(resumed, version) for version in range(3)],
        "logs": logs,
    }


@pytest.mark.slow
def test_resume_before_the_boundary_unfreezes_at_the_configured_epoch(runs: dict) -> None:
    first, second, _ = runs["resumed"]
    assert (first["epoch"], second["epoch"]) == (0, 2)  # last.ckpt is the last epoch, not the best
    assert f"fine-tuning, epoch 2: unfroze block5 (lr {CLI_LR * 0.5:.3g})" in runs["logs"][1]
    assert [group[:2] for group in groups_of(second)] == [("head", CLI_LR), ("block5", CLI_LR * 0.5)]
    assert changed(first, second, "backbone.body.block5")
    assert not changed(first, second, "backbone.body.block4")


@pytest.mark.slow
def test_resume_after_the_boundary_keeps_training_the_unfrozen_block(runs: dict) -> None:
    _, second, third = runs["resumed"]
    assert third["epoch"] == FINAL_EPOCH
    assert changed(second, third, "backbone.body.block5")  # Lightning #21901 would leave it frozen
    assert changed(second, third, "backbone.body.block4")
    assert not changed(second, third, "backbone.body.block3")
    assert "fine-tuning, epoch 3: resumed training block5" in runs["logs"][2]
    assert f"fine-tuning, epoch 3: unfroze block4 (lr {CLI_LR * 0.1:.3g})" in runs["logs"][2]
    assert groups_of(third) == groups_of(runs["uninterrupted"])
    expected = [("head", CLI_LR), ("block5", CLI_LR * 0.5), ("block4", CLI_LR * 0.1)]
    assert [group[:2] for group in groups_of(third)] == expected


@pytest.mark.slow
def test_fine_tuned_checkpoint_is_tested_without_the_init_from_file(runs: dict, tiny_data: Path) -> None:
    workdir = runs["workdir"]
    checkpoint = workdir / "lightning_logs" / "version_2" / "checkpoints" / "last.ckpt"
    assert load_model(checkpoint).hparams.backbone == "vgg16"
    result = run_cli(
        "test", "--config", str(REPO / "configs" / "vgg16_fine_tuning.yaml"), *runs["init"],
        "--data.root", str(tiny_data), "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
        "--ckpt_path", str(checkpoint), cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test_acc" in result.stdout
