"""Staged fine-tuning: unfreeze backbone blocks at set epochs, each with its own learning rate.

Lightning's ``BaseFinetuning`` stores the param groups it adds and puts them back into the
optimizer on resume, but every module is frozen again first (``freeze_before_training``) and the
usual ``finetune_function`` only acts *at* a stage's epoch, so after a resume the restored groups
hold parameters without gradients that silently stop training (Lightning issue #21901). Here every
epoch start brings the model to the state the schedule asks for at that epoch: stages that are due
are trainable, and their parameters join the optimizer only if the checkpoint did not put them there
already. A resumed run therefore matches an uninterrupted one, whatever epoch it resumes from.
With a learning-rate schedule (``model.scheduler``) a stage's group follows it from its epoch on, at
``lr_factor`` times the head's scheduled rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch.optim import Optimizer

from lightning_transfer.backbones import Backbone
from lightning_transfer.model import set_trainable
from lightning_transfer.schedules import add_param_group
from lightning_transfer.utils.errors import UserError


@dataclass
class Stage:
    """One step of the schedule.

    Args:
        epoch: the epoch (counted from 0) at whose start the blocks are unfrozen.
        blocks: backbone block names (``[block5]``), or a count N: the N topmost blocks that
            earlier stages did not unfreeze (``1`` = the top block, then the one below, ...).
        lr_factor: learning rate of the blocks' new parameter group, relative to ``model.lr``.
    """

    epoch: int
    blocks: list[str] | int
    lr_factor: float = 0.1


def resolve_blocks(backbone: Backbone, stages: list[Stage]) -> list[list[str]]:
    """Block names of each stage, with counts taken downwards from the top; no block twice."""
    taken: list[str] = []
    resolved = []
    for stage in stages:
        if isinstance(stage.blocks, int):
            remaining = [name for name in reversed(backbone.block_names) if name not in taken]
            if not 1 <= stage.blocks <= len(remaining):
                raise UserError(
                    f"fine-tuning stage at epoch {stage.epoch} asks for {stage.blocks} more blocks; "
                    f"{len(remaining)} of backbone {backbone.spec.name!r} are left: {', '.join(remaining)}"
                )
            names = remaining[: stage.blocks]
        else:
            names = list(stage.blocks)
            for name in names:
                backbone.block(name)  # UserError listing the valid names
                if name in taken:
                    raise UserError(f"fine-tuning block {name!r} appears in more than one stage")
        taken.extend(names)
        resolved.append(names)
    return resolved


class StagedFinetuning(BaseFinetuning):
    """Unfreeze backbone blocks stage by stage; resumes from any epoch as if never interrupted.

    Args:
        stages: when to unfreeze which blocks and at which learning rate, in epoch order.
        train_bn: also train the BatchNorm layers of unfrozen blocks. By default they stay frozen
            and in eval mode, keeping their ImageNet statistics (small batches make poor ones).
    """

    def __init__(self, stages: list[Stage], train_bn: bool = False) -> None:
        super().__init__()
        if not stages:
            raise UserError("StagedFinetuning needs at least one stage")
        epochs = [stage.epoch for stage in stages]
        if epochs != sorted(epochs) or epochs[0] < 0:
            raise UserError(f"fine-tuning stages must be in epoch order from epoch 0 on; got epochs {epochs}")
        self.stages = stages
        self.train_bn = train_bn
        self._stage_blocks: list[list[str]] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and getattr(trainer.datamodule, "cache_features", False):
            raise UserError(
                "staged fine-tuning trains backbone blocks, so it needs images, not cached features; "
                "set --data.cache_features false"
            )
        self._stage_blocks = resolve_blocks(pl_module.backbone, self.stages)
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        for names in self._stage_blocks:
            for name in names:
                set_trainable(pl_module.backbone.block(name), False)

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Make every stage due by ``epoch`` trainable and make sure the optimizer holds it."""
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for stage, names in zip(self.stages, self._stage_blocks):
            if stage.epoch > epoch:
                break
            blocks = [pl_module.backbone.block(name) for name in names]
            frozen = list(self.filter_params(blocks, train_bn=self.train_bn, requires_grad=False))
            if not frozen:  # unfrozen at an earlier epoch of this run
                continue
            for parameter in frozen:
                parameter.requires_grad = True
            new = [p for p in frozen if id(p) not in in_optimizer]
            if new:
                lr = pl_module.hparams.lr * stage.lr_factor
                group = {"params": new, "lr": lr, "name": "+".join(names)}
                schedulers = [config.scheduler for config in pl_module.trainer.lr_scheduler_configs]
                add_param_group(optimizer, schedulers, group)
                scheduled = f", {group['lr']:.3g} at this point of the schedule" if group["lr"] != lr else ""
                what = f"unfroze {', '.join(names)} (lr {lr:.3g}{scheduled})"
            else:  # resumed: the checkpoint restored this stage's group and its learning rate
                what = f"resumed training {', '.join(names)} (lr from the checkpoint)"
            trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
            rank_zero_info(f"fine-tuning, epoch {epoch}: {what}; trainable parameters: {trainable:,}")
