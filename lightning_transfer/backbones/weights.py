"""Where weights come from: state-dict files users pass as ``--model.weights PATH`` (tensors only,
clear errors) and torchvision's pretrained weights (the torch hub cache, else a download)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
from safetensors.torch import load_file
from torchvision.models import WeightsEnum

from lightning_transfer.backbones.spec import StateDict
from lightning_transfer.utils.errors import UserError, WeightsUnavailableError


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


def torchvision_state_dict(weights: WeightsEnum, label: str) -> StateDict:
    """torchvision ``weights`` from the torch hub cache, downloaded into it when missing; offline and
    not cached, one line saying where they were looked for and the ways out."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise WeightsUnavailableError(
            f"{label} ImageNet weights (torchvision {weights}) are not cached at "
            f"{cached} and could not be downloaded from {weights.url} ({err}); either pass "
            f"--model.weights PATH to a local {label} state-dict file, or run once on a machine with "
            "internet to fill the torch hub cache (TORCH_HOME)"
        ) from None
