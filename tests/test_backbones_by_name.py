"""Any torchvision or timm model as the backbone: derived blocks, classifier, preprocessing and class
names; fitting, staged fine-tuning with a resume, visualize and the demo from such a checkpoint;
weights offline; names that are unknown or refused."""

from __future__ import annotations

import json
import urllib.error
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from lightning import Callback, LightningModule, Trainer
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.transforms import InterpolationMode

from conftest import REPO, TINY_SIZE, run_cli
from lightning_transfer import load_model, read_checkpoint
from lightning_transfer.backbones import Backbone, create_backbone, get_spec, load_source
from lightning_transfer.backbones.split import conv_base_paths
from lightning_transfer.callbacks.finetuning import Stage, StagedFinetuning
from lightning_transfer.commands.backbones import main as backbones_command
from lightning_transfer.commands.demo import build_demo, predict
from lightning_transfer.commands.visualize import main as visualize
from lightning_transfer.data import ImageFolderDataModule, load_rgb
from lightning_transfer.interpret import ImageNetClassifier, gradcam_view
from lightning_transfer.model import TransferClassifier
from lightning_transfer.utils.errors import UserError, WeightsUnavailableError

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


# ------------------------------------------------------------------------------------- derived


@pytest.mark.parametrize(
    ("name", "blocks"),
    [
        ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4"]),
        ("timm/resnet10t", ["stem", "layer1", "layer2", "layer3", "layer4"]),
        ("mobilenet_v3_small", ["stem", *(f"features_{index}" for index in range(1, 12)), "top"]),
        ("timm/test_efficientnet", ["stem", *(f"blocks_{index}" for index in range(5)), "top"]),
        ("squeezenet1_1", ["block1", "block2", "block3", "block4"]),  # plain layers: blocks end at pooling
        pytest.param(  # its classifier starts with a functional ReLU and pooling
            "densenet121", ["stem", "denseblock1", "transition1", "denseblock2", "transition2", "denseblock3",
                            "transition3", "denseblock4", "top"], marks=pytest.mark.slow,
        ),
    ],
)
def test_blocks_and_classifier_reproduce_the_upstream_model(name: str, blocks: list[str]) -> None:
    spec = get_spec(name)
    torch.manual_seed(0)
    source = load_source(spec, "none").eval()
    body, head = spec.to_blocks(source), spec.to_imagenet_head(source)
    images = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        logits = head(body(images))
        expected = source(images)

    assert [block for block, _ in body.named_children()] == blocks
    assert torch.allclose(logits, expected, atol=1e-5)
    assert {id(p) for p in body.parameters()} <= {id(p) for p in source.parameters()}, "shared, not copied"


@pytest.mark.slow
def test_auxiliary_classifiers_do_not_cut_the_conv_base_short() -> None:
    """GoogLeNet branches off auxiliary classifiers mid-way when training; the split is made in eval mode."""
    backbone = create_backbone("googlenet", "none")
    assert backbone.training and backbone.block_names[-3:] == ["maxpool4", "inception5a", "inception5b"]
    # its weights expect the input torchvision's transform_input makes
    assert get_spec("googlenet").preprocessing.mean == (0.5, 0.5, 0.5)


def test_layers_grad_cam_layer_and_state_dict_keys_follow_the_blocks() -> None:
    backbone = create_backbone("resnet18", "none")
    assert list(backbone.layers())[:5] == ["stem_conv1", "stem_bn1", "stem_relu", "stem_maxpool", "stem"]
    assert backbone.cam_layer == "layer4"
    assert "body.layer4.1.conv2.weight" in backbone.state_dict()
    vgg16_shaped = Backbone(get_spec("vgg16"), nn.Sequential(OrderedDict(block5=nn.Identity())))
    assert vgg16_shaped.cam_layer == "block5_conv3"  # a spec's own choice stays


@pytest.mark.parametrize(
    ("name", "interpolation", "mean", "size"),
    [
        ("resnet18", InterpolationMode.BILINEAR, (0.485, 0.456, 0.406), 224),
        ("efficientnet_b3", InterpolationMode.BICUBIC, (0.485, 0.456, 0.406), 300),
        ("inception_v3", InterpolationMode.BILINEAR, (0.5, 0.5, 0.5), 299),  # normalized inside by torchvision
        ("timm/resnet10t", InterpolationMode.BICUBIC, (0.485, 0.456, 0.406), 176),
        ("timm/mobilenetv3_small_050", InterpolationMode.BICUBIC, (0.485, 0.456, 0.406), 224),
    ],
)
def test_preprocessing_comes_from_the_weights(
    name: str, interpolation: InterpolationMode, mean: tuple, size: int
) -> None:
    spec = get_spec(name)
    assert spec.preprocessing.interpolation == interpolation
    assert spec.preprocessing.mean == pytest.approx(mean)
    assert spec.default_image_size == size
    assert spec.preprocessing.resize(150).size == [150, 150]  # the book squashes, whatever the backbone


@pytest.mark.parametrize(("name", "size"), [("resnet18", 224), ("timm/resnet10t", 176)])
def test_imagenet_classifier_names_and_size_come_from_the_weights(name: str, size: int, tiny_data: Path) -> None:
    imagenet = ImageNetClassifier(name, "none")
    image = load_rgb(sorted((tiny_data / "val" / "cat").glob("*.jpg"))[0])
    view = gradcam_view(imagenet, image, "tabby")

    assert len(imagenet.class_names) == 1000 and imagenet.class_names[386] == "African elephant"
    assert imagenet.image_size == size
    assert view.target == "tabby" and view.overlay.size == image.size


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


# ---------------------------------------------------------------------------------- weights


def test_planted_imagenet_weights_load_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision's from the torch hub cache (TORCH_HOME), timm's from the Hugging Face cache."""
    torch.manual_seed(1)
    resnet18 = get_spec("resnet18").build_source().state_dict()
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(resnet18, hub / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    resnet10t = get_spec("timm/resnet10t").build_source().state_dict()
    repo = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    save_file(resnet10t, str(repo / "snapshots" / "abc" / "model.safetensors"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    assert torch.equal(create_backbone("resnet18").block("layer4")[1].conv2.weight, resnet18["layer4.1.conv2.weight"])
    assert torch.equal(
        create_backbone("timm/resnet10t").block("layer4")[0].conv1.weight, resnet10t["layer4.0.conv1.weight"]
    )


def test_offline_without_cached_weights_is_one_line_saying_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(url: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(WeightsUnavailableError) as torchvision_error:
        create_backbone("resnet18")
    with pytest.raises(WeightsUnavailableError) as timm_error:
        create_backbone("timm/resnet10t")
    torch_hub = tmp_path / "torch" / "hub" / "checkpoints"
    for error, cache in ((torchvision_error, torch_hub), (timm_error, tmp_path / "hf")):
        message = str(error.value)
        assert "\n" not in message and str(cache) in message
        assert "--model.weights PATH" in message and "internet" in message
    with pytest.raises(WeightsUnavailableError, match="timm has no pretrained weights for timm/test_maxvit"):
        create_backbone("timm/test_maxvit")  # never random weights in silence


# -------------------------------------------------------------------------- names and refusals


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet9", "unknown backbone 'resnet9'; closest names: .*resnet18"),
        ("resnet10t", "unknown backbone 'resnet10t'; closest names: .*timm/resnet10t"),
        ("timm/resnet50.bogus",
         "timm has no weights timm/resnet50.bogus; pretrained ones of resnet50: timm/resnet50.a1_in1k"),
        ("timm/test_vit_relpos", "'timm/test_vit_relpos' cannot be split into blocks of a "
         "convolutional base: it does not run as a chain .*ViT-style models.*are not supported"),
        ("timm/test_vit", "'timm/test_vit' cannot be split .*: tracing its forward_features failed .*ViT-style"),
        ("timm/test_mambaout", "'timm/test_mambaout' cannot be split .*: its features are laid out NHWC"),
    ],
)
def test_unknown_and_refused_names_are_one_line(name: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        create_backbone(name, "none")
    assert "\n" not in str(error.value)


def test_torchvision_swin_is_refused_and_so_is_a_forward_fx_cannot_trace() -> None:
    tiny_swin = SwinTransformer([4, 4], 8, [1, 1], [1, 1], [2, 2], num_classes=2)
    with pytest.raises(UserError, match="'swin_t' cannot be split into blocks .*: it is a vision transformer"):
        get_spec("swin_t").to_blocks(tiny_swin)

    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.conv(images) if images.sum() > 0 else images

    with pytest.raises(UserError, match="'toy' cannot be split into blocks .*: tracing its forward failed"):
        conv_base_paths(DataDependent(), "toy", ())


def test_too_small_images_are_one_line_naming_the_default_size() -> None:
    with pytest.raises(UserError, match="'timm/test_coatnet' cannot run on 64 px images .*default is 160"):
        classifier("timm/test_coatnet")


def test_backbones_command_lists_and_describes(capsys: pytest.CaptureFixture) -> None:
    backbones_command([])
    overview = capsys.readouterr().out
    backbones_command(["timm/convnext_at*"])
    listed = capsys.readouterr().out
    backbones_command(["timm/resnet10t"])
    described = capsys.readouterr().out

    assert "vgg16" in overview and "efficientnet_lite0" in overview and "timm/NAME" in overview
    assert "timm/convnext_atto," in listed and "resnet" not in listed
    assert "blocks (bottom to top, for fine-tuning stages): stem, layer1, layer2, layer3, layer4" in described
    assert "Grad-CAM layer: layer4" in described and "176 px by default, bicubic" in described


# ------------------------------------------------------------------------------ command line


@pytest.mark.slow
def test_timm_imagenet_weights_offline_is_one_line_from_the_cli(tiny_data: Path, tmp_path: Path) -> None:
    result = run_cli(
        "fit", "--config", str(REPO / "configs" / "vgg16_feature_extraction_augmented.yaml"),
        "--model.backbone", "timm/resnet10t", "--data.root", str(tiny_data), cwd=tmp_path,
        env={"HF_HOME": str(tmp_path / "empty"), "HF_HUB_CACHE": str(tmp_path / "empty" / "hub"),
             "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: timm/resnet10t ImageNet weights are not in the Hugging Face cache ")
    assert str(tmp_path / "empty" / "hub") in last and "--model.weights PATH" in last


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
