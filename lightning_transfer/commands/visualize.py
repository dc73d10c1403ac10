"""``lightning-transfer visualize {activations,filters,gradcam}``: what the convnet learned, as PNGs.

The model comes from a checkpoint (``--ckpt_path``) or a bare backbone (``--backbone`` with
``--weights``); Grad-CAM on a bare backbone uses its ImageNet classifier (``--imagenet``). Runs on
the GPU when there is one. Existing files are never replaced unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from lightning_transfer.backbones import Backbone, create_backbone
from lightning_transfer.callbacks import checkpoint_file
from lightning_transfer.data import load_rgb
from lightning_transfer.interpret import (
    Classifier,
    ImageNetClassifier,
    activation_grid,
    default_layers,
    filter_grid,
    filter_patterns,
    gradcam_view,
    image_batch,
    layer_activations,
    layer_channels,
    save_titled,
    shape_title,
)
from lightning_transfer.model import load_model
from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.runtime import default_device

CPU_FILTERS, GPU_FILTERS = 16, 64
CPU_PATTERN_SIZE = 64
"""Filter ascent is ~40 forward+backward passes per filter: on CPU, fewer and smaller patterns."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    source = common.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", help="a checkpoint written by `lightning-transfer fit`")
    source.add_argument(
        "--backbone",
        help="a bare backbone instead: vgg16, efficientnet_lite0, a torchvision model or timm/NAME "
        "(see `lightning-transfer backbones`)",
    )
    common.add_argument(
        "--weights", default="imagenet", help="with --backbone: imagenet, none, or a state-dict file"
    )
    common.add_argument("--out", type=Path, default=Path("viz"), help="folder for the PNGs (default viz/)")
    common.add_argument("--overwrite", action="store_true", help="replace existing PNGs of the same name")
    layers = argparse.ArgumentParser(add_help=False)
    layers.add_argument("--layers", help="comma-separated layer names (default: a few across the depth)")
    layers.add_argument(
        "--image_size", type=int, help="with --backbone: input size (default: the backbone's)"
    )

    parser = argparse.ArgumentParser(
        prog="lightning-transfer visualize",
        description="See what the convnet learned: activations, filter patterns, Grad-CAM, as PNG files.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    activations = commands.add_parser(
        "activations", parents=[common, layers], help="each layer's channels for one image"
    )
    activations.add_argument("--image", required=True, help="the image file to look at")
    activations.add_argument("--max_channels", type=int, default=64, help="channels shown per layer")
    filters = commands.add_parser(
        "filters", parents=[common, layers], help="inputs that maximize each filter (gradient ascent)"
    )
    filters.add_argument(
        "--filters",
        type=int,
        help=f"first N filters per layer (default {GPU_FILTERS} on GPU, {CPU_FILTERS} on CPU)",
    )
    filters.add_argument(
        "--size",
        type=int,
        help=f"pattern size in pixels (default: the input size on GPU, {CPU_PATTERN_SIZE} on CPU)",
    )
    filters.add_argument("--steps", type=int, default=40, help="gradient ascent steps")
    filters.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    gradcam = commands.add_parser("gradcam", parents=[common], help="class activation heatmap for one image")
    gradcam.add_argument("--image", required=True, help="the image file to look at")
    gradcam.add_argument("--target", help="class name to explain (default: the predicted class)")
    gradcam.add_argument(
        "--imagenet", action="store_true", help="with --backbone: explain the backbone's ImageNet classifier"
    )
    args = parser.parse_args(argv)
    if args.command == "gradcam" and args.backbone and not args.imagenet:
        parser.error("Grad-CAM needs a classifier: pass --ckpt_path CKPT, or --backbone NAME --imagenet")
    if args.command == "gradcam" and args.imagenet and not args.backbone:
        parser.error("--imagenet needs --backbone NAME (the checkpoint's head is not ImageNet's)")
    return args


def load_backbone(args: argparse.Namespace) -> tuple[Backbone, int]:
    """The backbone to look into and its input size: from the checkpoint, or bare."""
    if args.ckpt_path:
        model = load_model(args.ckpt_path).to(default_device())
        return model.backbone, model.image_size
    backbone = create_backbone(args.backbone, args.weights).to(default_device())
    return backbone, args.image_size or backbone.spec.default_image_size


def load_classifier(args: argparse.Namespace) -> Classifier:
    if args.ckpt_path:
        return load_model(args.ckpt_path).to(default_device())
    return ImageNetClassifier(args.backbone, args.weights).to(default_device())


def layer_names(args: argparse.Namespace, backbone: Backbone) -> list[str]:
    if not args.layers:
        return default_layers(backbone)
    names = [name.strip() for name in args.layers.split(",") if name.strip()]
    for name in names:
        backbone.layer(name)  # unknown names fail here, before any work, listing the valid ones
    return names


def slug(text: str) -> str:
    """A class or layer name as a safe file-name part (``African elephant`` -> ``African_elephant``)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def claim(out: Path, names: Sequence[str], overwrite: bool) -> list[Path]:
    """The output paths, refusing to replace existing files unless asked."""
    paths = [out / name for name in names]
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise UserError(f"{', '.join(existing)} already exist; pass --overwrite or another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    return paths


def run_activations(args: argparse.Namespace) -> None:
    image = load_rgb(args.image)
    backbone, image_size = load_backbone(args)
    names = layer_names(args, backbone)
    stem = slug(Path(args.image).stem)
    paths = claim(args.out, [f"activations_{stem}_{slug(name)}.png" for name in names], args.overwrite)
    activations = layer_activations(backbone, image_batch(backbone, [image], image_size), names)
    for path, name in zip(paths, names):
        activation = activations[name][0].cpu()
        save_titled(activation_grid(activation[: args.max_channels]), shape_title(name, activation), path)
        print(f"wrote {path}")


def run_filters(args: argparse.Namespace) -> None:
    on_gpu = default_device().type == "cuda"
    backbone, image_size = load_backbone(args)
    names = layer_names(args, backbone)
    size = args.size or (image_size if on_gpu else CPU_PATTERN_SIZE)
    count = args.filters or (GPU_FILTERS if on_gpu else CPU_FILTERS)
    paths = claim(args.out, [f"filters_{slug(name)}.png" for name in names], args.overwrite)
    for path, name in zip(paths, names):
        filters = range(min(count, layer_channels(backbone, name)))
        patterns = filter_patterns(
            backbone, name, filters, size=size, steps=args.steps, seed=args.seed, progress=True
        )
        before, after = patterns.activation_before.mean(), patterns.activation_after.mean()
        title = (
            f"{name}: filters 0-{len(patterns.filters) - 1}, {size}x{size} px, {args.steps} steps, "
            f"mean activation {before:.3g} -> {after:.3g}"
        )
        save_titled(filter_grid(patterns), title, path)
        print(f"wrote {path}")


def run_gradcam(args: argparse.Namespace) -> None:
    image = load_rgb(args.image)
    view = gradcam_view(load_classifier(args), image, args.target)
    print(f"target {view.target!r} (probability {view.probability:.3f})")
    if not view.cam.any():
        print(f"the heatmap is empty: no region of the image counts as evidence for {view.target!r}")
    prefix = f"gradcam_{slug(Path(args.image).stem)}_{slug(view.target)}"
    heatmap, overlay = claim(args.out, [f"{prefix}_heatmap.png", f"{prefix}_overlay.png"], args.overwrite)
    for path, picture in ((heatmap, view.heatmap), (overlay, view.overlay)):
        picture.save(path)
        print(f"wrote {path}")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.ckpt_path:
        args.ckpt_path = checkpoint_file(args.ckpt_path)
    {"activations": run_activations, "filters": run_filters, "gradcam": run_gradcam}[args.command](args)
