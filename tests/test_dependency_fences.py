"""Private or undocumented APIs of dependencies that the package relies on, each checked here so that an upgrade
that removes one fails this test with a message saying what to change, not a user's run."""

from __future__ import annotations

import inspect
import operator

import timm
import torch
from lightning.pytorch.cli import LightningCLI

from lightning_transfer.commands.cli import TransferCLI
from lightning_transfer.features import bf16_supported
from lightning_transfer.schedules import nested


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


def test_torch_sequential_lr_still_keeps_its_schedulers_in_a_private_list() -> None:
    """``schedules.add_param_group`` registers a group added in mid-run with every scheduler a
    SequentialLR chains, which it finds in ``SequentialLR._schedulers``. If this fails, find where
    torch keeps them now (or build the cosine warm-up without SequentialLR)."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, total_iters=2)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    chained = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[2])
    assert list(nested([chained])) == [chained, warmup, cosine]


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


def test_fx_tracers_still_trace_the_method_named_by_traced_func_name() -> None:
    """``backbones.split`` traces timm's ``forward_features`` by setting ``torch.fx.Tracer.traced_func_name``
    (a class attribute, not in torch's documentation). If this fails, timm backbones are refused as
    not splittable: trace a wrapper module whose forward calls ``forward_features`` instead."""

    class TwoMethods(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    tracer = torch.fx.Tracer()
    tracer.traced_func_name = "forward_features"
    (node,) = [node for node in tracer.trace(TwoMethods()).nodes if node.op == "call_function"]
    assert node.target is operator.mul, "torch.fx no longer traces the method traced_func_name names"


def test_timm_still_marks_channels_last_features_with_output_fmt() -> None:
    """timm's Swin-style models say ``output_fmt = 'NHWC'`` (an attribute, not documented API);
    ``backbones.generic`` refuses them on it. If this fails, their channels-last feature maps would
    pass as conv maps: find timm's new marker."""
    assert timm.create_model("test_mambaout").output_fmt == "NHWC"
    assert getattr(timm.create_model("test_resnet"), "output_fmt", "NCHW") == "NCHW"
