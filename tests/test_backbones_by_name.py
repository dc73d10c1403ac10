"""Backbones by name: blocks, classifier, preprocessing and class names derived from any torchvision or
timm model; weights offline; names that are unknown or refused; `lightning-transfer backbones`."""

from __future__ import annotations

import pickle
import urllib.error
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.transforms import InterpolationMode

from conftest import REPO, TINY_SIZE, run_cli
from lightning_transfer.backbones import Backbone, create_backbone, get_spec, load_source
from lightning_transfer.backbones.split import conv_base_paths
from lightning_transfer.commands.backbones import main as backbones_command
from lightning_transfer.data import load_rgb
from lightning_transfer.interpret import ImageNetClassifier, gradcam_view
from lightning_transfer.utils.errors import UserError, WeightsUnavailableError

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


@pytest.mark.parametrize("name", ["resnet18", "timm/resnet10t"])
def test_a_backbone_by_name_pickles_with_its_spec(name: str) -> None:
    """``ddp_spawn`` and notebook launchers pickle the model, and the model holds its backbone's spec."""
    backbone = create_backbone(name, "none")
    copy = pickle.loads(pickle.dumps(backbone))
    assert copy.spec.name == name and copy.block_names == backbone.block_names
    key = "body.layer4.0.conv1.weight"
    assert torch.equal(copy.state_dict()[key], backbone.state_dict()[key])


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
    backbone = create_backbone("timm/test_coatnet", "none")
    with pytest.raises(UserError, match="'timm/test_coatnet' cannot run on 64 px images .*default is 160"):
        backbone.output_shape(TINY_SIZE)


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
