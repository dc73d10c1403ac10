"""Activations, filter patterns, Grad-CAM: the Python API, `visualize` subcommands and GradCamLogger."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_SIZE, run_cli
from lightning_transfer import load_model
from lightning_transfer.backbones import Backbone, create_backbone
from lightning_transfer.commands.visualize import main as visualize
from lightning_transfer.data import load_rgb
from lightning_transfer.interpret import (
    ImageNetClassifier,
    activation_view,
    class_index,
    default_layers,
    filter_patterns,
    gradcam,
    gradcam_view,
    image_batch,
    layer_activations,
)
from lightning_transfer.model import TransferClassifier
from lightning_transfer.utils.errors import UserError


@pytest.fixture(scope="module")
def vgg16() -> Backbone:
    torch.manual_seed(0)
    return create_backbone("vgg16", "none").eval()


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> TransferClassifier:
    return load_model(tiny_checkpoint)


@pytest.fixture(scope="module")
def images(tiny_data: Path) -> list[Path]:
    """Two validation photos per class."""
    return [path for name in ("cat", "dog") for path in sorted((tiny_data / "val" / name).glob("*.jpg"))[:2]]


def test_activations_equal_a_plain_forward_hook(vgg16: Backbone) -> None:
    names = ["block1_conv1", "block3_conv2", "block5_pool"]
    hooked: dict[str, torch.Tensor] = {}
    handles = [
        vgg16.layer(name).register_forward_hook(lambda m, i, out, name=name: hooked.__setitem__(name, out))
        for name in names
    ]
    batch = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        vgg16(batch)
    for handle in handles:
        handle.remove()

    activations = layer_activations(vgg16, batch, names)

    assert list(activations) == names
    assert activations["block1_conv1"].shape == (2, 64, 64, 64)
    assert activations["block5_pool"].shape == (2, 512, 2, 2)
    for name in names:
        torch.testing.assert_close(activations[name], hooked[name], rtol=0, atol=0)


def test_default_layers_span_the_depth(vgg16: Backbone) -> None:
    assert default_layers(vgg16) == [f"block{n}_conv1" for n in range(1, 6)]
    efficientnet = create_backbone("efficientnet_lite0", "none")
    assert default_layers(efficientnet) == ["stem", "block2", "block4", "block6", "top"]


@pytest.mark.parametrize(
    ("backbone", "weights", "layer"), [("vgg16", "none", "block2_conv1"), ("efficientnet_lite0", "imagenet", "block3")]
)
def test_filter_ascent_increases_the_filters_activation(backbone: str, weights: str, layer: str) -> None:
    torch.manual_seed(0)
    patterns = filter_patterns(create_backbone(backbone, weights), layer, [0, 1, 2, 3], size=32, steps=8)

    assert patterns.images.shape == (4, 3, 32, 32)
    alive = patterns.activation_before > 0  # a ReLU filter that is zero everywhere has no gradient
    assert alive.sum() >= 2
    assert (patterns.activation_after[alive] > 2 * patterns.activation_before[alive]).all()
    assert (patterns.activation_after >= patterns.activation_before).all()


def test_filter_ascent_rejects_filters_the_layer_lacks(vgg16: Backbone) -> None:
    with pytest.raises(UserError, match="has filters 0..63"):
        filter_patterns(vgg16, "block1_conv1", [64], size=16, steps=1)


@pytest.fixture(scope="module")
def imagenet_classifier() -> ImageNetClassifier:
    """EfficientNet-Lite0's real ImageNet classifier: a trained network with meaningful evidence."""
    return ImageNetClassifier("efficientnet_lite0")


@pytest.mark.slow
def test_gradcam_maps_are_nonconstant_and_depend_on_the_target(
    imagenet_classifier: ImageNetClassifier, shared_data: Path
) -> None:
    photos = [load_rgb(shared_data / "val" / name / f"{name}.4001.jpg") for name in ("cat", "dog")]
    batch = image_batch(imagenet_classifier.backbone, photos, imagenet_classifier.image_size)
    names = imagenet_classifier.class_names
    cats, dogs = (
        gradcam(imagenet_classifier, batch, class_index(names, name)) for name in ("tabby", "Labrador retriever")
    )

    assert cats.shape == dogs.shape == (2, 224, 224)
    for maps in (cats, dogs):
        assert maps.min() >= 0 and maps.flatten(1).amax(dim=1).tolist() == [1.0, 1.0]
        assert (maps.flatten(1).std(dim=1) > 0.05).all()
    assert ((cats - dogs).abs().flatten(1).mean(dim=1) > 0.05).all()


def test_gradcam_defaults_to_the_predicted_class(model: TransferClassifier, images: list[Path]) -> None:
    batch = image_batch(model.backbone, [load_rgb(path) for path in images], model.image_size)
    model.train()
    maps = gradcam(model, batch)

    assert model.training  # the caller's mode is restored
    predicted = model.eval()(batch).argmax(dim=1)
    assert maps.shape == (4, TINY_SIZE, TINY_SIZE)
    for index, label in enumerate(predicted.tolist()):
        torch.testing.assert_close(maps[index], gradcam(model, batch[index : index + 1], label)[0])


def test_gradcam_view_of_one_pil_image(model: TransferClassifier, images: list[Path]) -> None:
    image = load_rgb(images[0])

    predicted = gradcam_view(model, image)
    dog = gradcam_view(model, image, "dog")

    assert predicted.target in ("cat", "dog") and 0.5 <= predicted.probability <= 1
    assert dog.target == "dog"
    assert dog.heatmap.size == dog.overlay.size == image.size
    assert dog.cam.shape == (TINY_SIZE, TINY_SIZE)
    assert dog.overlay.mode == "RGB"
    with pytest.raises(UserError, match="unknown class 'bird'; valid classes: cat, dog"):
        gradcam_view(model, image, "bird")


def test_activation_view_of_one_layer(model: TransferClassifier, images: list[Path]) -> None:
    view = activation_view(model, load_rgb(images[0]), "block2_conv1")

    assert view.title == "block2_conv1: 128 channels, 32x32"
    assert len(view.channels) == 128 and view.channels[0].size == (32, 32)
    assert view.grid.size == (16 * 33 + 1, 8 * 33 + 1)  # 1-pixel white gaps and border
    with pytest.raises(UserError, match="no layer 'block9'; valid layers: block1_conv1, "):
        activation_view(model, load_rgb(images[0]), "block9")


def test_gradcam_view_names_imagenet_classes(
    imagenet_classifier: ImageNetClassifier, images: list[Path]
) -> None:
    image = load_rgb(images[0])
    view = gradcam_view(imagenet_classifier, image, "tabby")

    assert len(imagenet_classifier.class_names) == 1000
    assert view.target == "tabby" and view.overlay.size == image.size
    with pytest.raises(UserError, match="unknown class 'elephant'; 1000 classes, closest: .*African elephant"):
        gradcam_view(imagenet_classifier, image, "elephant")


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_visualize_commands_write_pngs(
    tiny_checkpoint: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "viz"
    image = str(images[2])  # a dog
    checkpoint = ["--ckpt_path", str(tiny_checkpoint), "--out", str(out)]
    visualize(["activations", *checkpoint, "--image", image, "--layers", "block1_conv1,block5_pool"])
    visualize(["filters", "--backbone", "vgg16", "--weights", "none", "--out", str(out)]
              + ["--layers", "block1_conv1", "--filters", "4", "--size", "24", "--steps", "3"])
    visualize(["gradcam", *checkpoint, "--image", image, "--target", "cat"])

    written = sorted(path.name for path in out.iterdir())
    assert written == [
        "activations_dog.1000_block1_conv1.png",
        "activations_dog.1000_block5_pool.png",
        "filters_block1_conv1.png",
        "gradcam_dog.1000_cat_heatmap.png",
        "gradcam_dog.1000_cat_overlay.png",
    ]
    printed = capsys.readouterr().out
    for name in written:
        assert f"wrote {out / name}" in printed
        assert _png_size(out / name)[0] >= 64
    assert _png_size(out / "gradcam_dog.1000_cat_overlay.png") == Image.open(image).size
    assert "target 'cat'" in printed

    with pytest.raises(UserError, match="already exist; pass --overwrite"):
        visualize(["gradcam", *checkpoint, "--image", image, "--target", "cat"])
    visualize(["gradcam", *checkpoint, "--image", image, "--target", "cat", "--overwrite"])


@pytest.mark.slow
def test_visualize_unreadable_image_is_one_line_from_the_cli(tmp_path: Path) -> None:
    bad_image = tmp_path / "notes.jpg"
    bad_image.write_text("not an image")

    result = run_cli(
        "visualize", "gradcam", "--backbone", "vgg16", "--imagenet", "--image", str(bad_image), cwd=tmp_path
    )

    assert result.returncode != 0
    assert result.stderr.startswith(f"error: cannot read image '{bad_image}'")
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "viz").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["activations", "--layers", "block1_conv9"], "has no layer 'block1_conv9'; valid layers: block1_conv1, "),
        (["filters", "--layers", "block1_conv1,top"], "backbone 'vgg16' has no layer 'top'; valid layers: block1_"),
        (["gradcam", "--target", "bird"], "unknown class 'bird'; valid classes: cat, dog"),
    ],
)
def test_visualize_bad_names_fail_before_writing_naming_the_choices(
    args: list[str], message: str, tiny_checkpoint: Path, images: list[Path], tmp_path: Path
) -> None:
    image = [] if args[0] == "filters" else ["--image", str(images[0])]
    with pytest.raises(UserError, match=re.escape(message)):
        visualize([*args, *image, "--ckpt_path", str(tiny_checkpoint), "--out", str(tmp_path / "viz")])
    assert not (tmp_path / "viz").exists()


@pytest.mark.slow
def test_gradcam_logger_from_yaml_logs_overlays_to_tensorboard(tiny_data: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tmp_path / "callbacks.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning_transfer.callbacks.GradCamLogger\n"
        "      init_args: {num_images: 3}\n"
    )
    result = run_cli(
        "fit", "--config", str(REPO / "configs" / "efficientnet_lite0_feature_extraction_augmented.yaml"),
        "--config", str(config), "--data.root", str(tiny_data), "--data.image_size", str(TINY_SIZE),
        "--data.num_workers", "0", "--data.augment", "false", "--model.weights", "none",
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    logged = events.Images("gradcam")
    assert len(logged) == 2  # one grid per epoch, none for the sanity check
    assert (logged[0].width, logged[0].height) == (3 * (TINY_SIZE + 2) + 2, TINY_SIZE + 4)
