"""Private APIs of dependencies that the package relies on, each checked here so that an upgrade
that removes one fails this test with a message saying what to change, not a user's run."""

from __future__ import annotations

import inspect

import torch
from lightning.pytorch.cli import LightningCLI

from lightning_transfer.commands.cli import TransferCLI
from lightning_transfer.features import bf16_supported


def test_lightning_cli_still_calls_the_private_parse_ckpt_path_hook() -> None:
    """TransferCLI overrides ``LightningCLI._parse_ckpt_path`` to read --ckpt_path safely (pyproject.toml
    caps lightning below the next minor version for this). If this fails, Lightning renamed or dropped
    the hook: move TransferCLI's checkpoint handling to where the new Lightning reads --ckpt_path."""
    assert "_parse_ckpt_path" in vars(LightningCLI), "LightningCLI no longer defines _parse_ckpt_path"
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__), (
        "LightningCLI.__init__ no longer calls _parse_ckpt_path"
    )
    assert "_parse_ckpt_path" in vars(TransferCLI)


def test_torch_still_has_the_private_cpu_bf16_check() -> None:
    """``features.bf16_supported`` asks ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` (torch has no
    public check). Without it extraction silently falls back to fp32 (twice as slow on bf16 CPUs):
    if this fails, find torch's new check."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    assert check is not None, "torch.ops.mkldnn._is_mkldnn_bf16_supported is gone"
    assert bf16_supported(torch.device("cpu")) == bool(check())


def test_lightning_still_has_the_unrepeated_sampler_of_its_predict() -> None:
    """``data.sharding.evaluation_sampler`` shares validation and test images out with Lightning's
    ``UnrepeatedDistributedSampler`` (what its predict uses; undocumented). It must stay a
    ``DistributedSampler``, or Lightning puts its padding one back in. If this fails, copy the class
    (a dozen lines) into data/sharding.py."""
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DistributedSampler

    assert issubclass(UnrepeatedDistributedSampler, DistributedSampler)
    shares = [list(UnrepeatedDistributedSampler(range(5), num_replicas=2, rank=rank, shuffle=False)) for rank in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3]]
