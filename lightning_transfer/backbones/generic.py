"""Specs for any torchvision classification model (``resnet50``) or timm model (``timm/convnext_atto``).

Everything the two hand-written backbones spell out is derived here: the blocks and the classifier
from the model's structure (``split``), the preprocessing and ImageNet class names from the weights'
own metadata (torchvision's weights enum, timm's pretrained config).
"""

from __future__ import annotations

import functools

import timm
import torch
from huggingface_hub import constants as hf_constants
from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config
from timm.models import PretrainedCfg
from torch import nn
from torchvision import models as tv_models
from torchvision.models import WeightsEnum
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.transforms import InterpolationMode

from lightning_transfer.backbones.spec import BackboneSpec, Preprocessing, StateDict
from lightning_transfer.backbones.split import blocks_of, classifier_after, conv_base_paths, not_a_conv_base
from lightning_transfer.backbones.weights import torchvision_state_dict
from lightning_transfer.utils.errors import UserError, WeightsUnavailableError

TIMM_PREFIX = "timm/"

TORCHVISION_STAGE_LISTS = frozenset({"features", "layers", "trunk_output"})
"""Where torchvision's classification models keep their stages (MNASNet: ``layers``; RegNet: ``trunk_output``)."""
TORCHVISION_HEAD = frozenset({"avgpool", "classifier", "fc"})
"""The first module each torchvision classification model runs after its conv base."""
NORMALIZED_INSIDE = frozenset({"googlenet", "inception_v3"})
"""torchvision's builders switch on ``transform_input`` for these when they load pretrained weights:
the forward re-normalizes ImageNet-normalized input to mean = std = 0.5. The conv base here runs
without it, so the preprocessing normalizes that way itself."""


def torchvision_names() -> list[str]:
    return tv_models.list_models(module=tv_models)


def _torchvision_conv_base(name: str, source: nn.Module) -> list[str]:
    if isinstance(source, (VisionTransformer, SwinTransformer)):
        raise not_a_conv_base(name, "it is a vision transformer (features: tokens, or channels-last grids)")
    return conv_base_paths(source, name, TORCHVISION_STAGE_LISTS, head_modules=TORCHVISION_HEAD)


def _torchvision_blocks(name: str, source: nn.Module) -> nn.Sequential:
    return blocks_of(source, _torchvision_conv_base(name, source))


def _torchvision_classifier(name: str, source: nn.Module) -> nn.Module:
    return classifier_after(source, name, TORCHVISION_STAGE_LISTS, _torchvision_conv_base(name, source)[-1])


def _torchvision_categories(weights: WeightsEnum) -> list[str]:
    return list(weights.meta["categories"])


def torchvision_spec(name: str) -> BackboneSpec:
    """Module-level functions, not closures, throughout: a model holding its spec stays picklable."""
    weights = tv_models.get_model_weights(name).DEFAULT
    transforms = weights.transforms()
    mean, std = (0.5,) * 3, (0.5,) * 3
    if name not in NORMALIZED_INSIDE:
        mean, std = tuple(transforms.mean), tuple(transforms.std)
    return BackboneSpec(
        name=name,
        description=f"torchvision {name} (full model)",
        build_source=functools.partial(tv_models.get_model, name, weights=None),
        imagenet_state_dict=functools.partial(torchvision_state_dict, weights, name),
        to_blocks=functools.partial(_torchvision_blocks, name),
        to_imagenet_head=functools.partial(_torchvision_classifier, name),
        imagenet_categories=functools.partial(_torchvision_categories, weights),
        preprocessing=Preprocessing(mean=mean, std=std, interpolation=transforms.interpolation),
        default_image_size=transforms.crop_size[0],
    )


def _timm_pretrained_cfg(name: str) -> PretrainedCfg | None:
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag
        architecture = name.split(".")[0]
        tags = [TIMM_PREFIX + tag for tag in timm.list_pretrained(f"{architecture}.*")]
        shown = ", ".join(tags[:8]) + (f" and {len(tags) - 8} more" if len(tags) > 8 else "")
        raise UserError(
            f"timm has no weights {TIMM_PREFIX}{name}; pretrained ones of {architecture}: {shown or 'none'} "
            f"(`lightning-transfer backbones '{TIMM_PREFIX}{architecture}.*'` lists them)"
        ) from None


def _stage_lists(source: nn.Module) -> set[str]:
    """The containers holding timm's feature stages (``feature_info``: ``blocks.1`` -> ``blocks``)."""
    return {info["module"].split(".")[0] for info in getattr(source, "feature_info", []) if "." in info["module"]}


def _timm_conv_base(source: nn.Module, name: str) -> list[str]:
    if getattr(source, "output_fmt", "NCHW") != "NCHW":  # Swin-style
        raise not_a_conv_base(name, f"its features are laid out {source.output_fmt}, not channels first")
    return conv_base_paths(source, name, _stage_lists(source), features_method="forward_features")


def _timm_blocks(name: str, source: nn.Module) -> nn.Sequential:
    return blocks_of(source, _timm_conv_base(source, name))


def _timm_classifier(name: str, source: nn.Module) -> nn.Module:
    return classifier_after(source, name, _stage_lists(source), _timm_conv_base(source, name)[-1])


def _timm_imagenet(model_name: str, cfg: PretrainedCfg | None) -> StateDict:
    label = TIMM_PREFIX + model_name
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise WeightsUnavailableError(
            f"timm has no pretrained weights for {label}; pass --model.weights PATH to a state-dict "
            "file, or --model.weights none to start from random weights"
        )
    if cfg.hf_hub_id:
        where = f"the Hugging Face cache {hf_constants.HF_HUB_CACHE} (model {cfg.hf_hub_id})"
        fill = "the Hugging Face cache (HF_HOME; offline, HF_HUB_OFFLINE=1 skips the download's retries)"
    else:
        where = f"the torch hub cache {torch.hub.get_dir()}/checkpoints ({cfg.url or cfg.file})"
        fill = "the torch hub cache (TORCH_HOME)"
    try:
        return timm.create_model(model_name, pretrained=True).state_dict()
    except (OSError, RuntimeError) as err:  # offline: huggingface_hub's LocalEntryNotFoundError is an OSError
        raise WeightsUnavailableError(
            f"{label} ImageNet weights are not in {where} and could not be downloaded "
            f"({str(err).splitlines()[0]}); either pass --model.weights PATH to a local state-dict file of "
            f"timm's {model_name}, or run once on a machine with internet to fill {fill}"
        ) from None


def _timm_categories(model_name: str, cfg: PretrainedCfg | None) -> list[str]:
    """ImageNet class names of the pretrained classifier: the first name of each of timm's descriptions
    (``tabby, tabby cat`` -> ``tabby``), as torchvision names them."""
    subset = infer_imagenet_subset(cfg.to_dict()) if cfg else None
    if subset is None:
        raise UserError(
            f"timm does not know the class names of {TIMM_PREFIX}{model_name}'s pretrained classifier; "
            "Grad-CAM against ImageNet classes needs a model trained on ImageNet"
        )
    return [description.split(",")[0] for description in ImageNetInfo(subset).label_descriptions()]


def timm_spec(model_name: str) -> BackboneSpec:
    cfg = _timm_pretrained_cfg(model_name)
    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg else {})
    name = TIMM_PREFIX + model_name

    return BackboneSpec(
        name=name,
        description=f"timm {model_name} (full model)",
        build_source=functools.partial(timm.create_model, model_name, pretrained=False),
        imagenet_state_dict=functools.partial(_timm_imagenet, model_name, cfg),
        to_blocks=functools.partial(_timm_blocks, name),
        to_imagenet_head=functools.partial(_timm_classifier, name),
        imagenet_categories=functools.partial(_timm_categories, model_name, cfg),
        preprocessing=Preprocessing(
            mean=tuple(data["mean"]), std=tuple(data["std"]), interpolation=InterpolationMode(data["interpolation"])
        ),
        default_image_size=data["input_size"][-1],
    )
