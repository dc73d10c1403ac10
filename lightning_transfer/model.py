"""TransferClassifier: pretrained conv base + small dense head, one LightningModule for every recipe.

Its hyperparameters (backbone name, image size, class names, head shape) are everything needed to
rebuild it, so one checkpoint drives fit, test, predict, visualize and the demo (``load_model``).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from lightning import LightningModule
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_transfer.backbones import Backbone, Preprocessing, create_backbone
from lightning_transfer.checkpoint import read_checkpoint
from lightning_transfer.head import Head, Pool, upgrade_head_keys
from lightning_transfer.schedules import Schedule, build_scheduler, plan_steps
from lightning_transfer.utils.errors import UserError


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """Any ``torch.optim`` optimizer by name, case-insensitive (``rmsprop``, ``adamw``, ``nadam``...).

    A name rather than LightningCLI's ``OptimizerCallable``: a callable in the hyperparameters would
    make checkpoints that ``weights_only`` loading refuses.
    """
    optimizers = {
        cls.__name__.lower(): cls
        for cls in vars(torch.optim).values()
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
    }
    if name.lower() not in optimizers:
        raise UserError(
            f"--model.optimizer {name!r} is not a torch.optim optimizer; choose one of: {', '.join(sorted(optimizers))}"
        )
    return optimizers[name.lower()]


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
"""The public BatchNorm classes (timm's BatchNormAct2d subclasses BatchNorm2d)."""


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad = trainable


class TransferClassifier(LightningModule):
    """Image classifier = pretrained backbone (frozen by default) + dense head.

    Args:
        backbone: ``vgg16``, ``efficientnet_lite0``, any torchvision classification model (``resnet50``)
            or any timm model as ``timm/NAME`` (``timm/convnext_atto``); ``lightning-transfer backbones``
            lists them.
        weights: ``imagenet``, ``none`` (random init) or a state-dict file (.pth/.pt/.safetensors).
        num_classes: number of output classes; set from the data by the CLI.
        class_names: label of each output, stored in the checkpoint; set from the data by the CLI.
        image_size: square input size; fixes the head's input for ``pool="flatten"``.
        head_hidden: width of the dense layer.
        dropout: dropout before the last layer.
        pool: ``flatten`` (the book) or ``avg`` (global average pooling).
        freeze_backbone: train only the head (feature extraction).
        optimizer: a ``torch.optim`` optimizer by name: ``rmsprop`` (the book), ``adam``, ``adamw``, ``sgd``...
        lr: learning rate of the head (the book: 2e-5).
        weight_decay: optimizer weight decay.
        scheduler: learning-rate schedule over the whole fit, stepped every batch: ``none`` (the book's
            constant rate), ``cosine`` (annealed to 0) or ``onecycle`` (up to ``lr``, then down).
        warmup_epochs: epochs (fractions allowed) of linear warm-up before the cosine decay, or of
            one-cycle's rising phase (0: 30% of the run, OneCycleLR's default).
        channels_last: run the convolutions in channels_last layout, oneDNN's preferred one, which
            makes CPU training steps faster (docs/performance.md). On GPUs ``false`` avoids cuDNN's
            per-batch-shape set-up time for channels_last kernels.
        init_from: a lightning-transfer checkpoint (e.g. of a feature-extraction run) whose backbone
            and head weights this model starts from; ``weights`` is then not loaded. Not stored in
            the hyperparameters: the trained weights end up in this model's own checkpoints, so
            they never need that file again.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        weights: str = "imagenet",
        num_classes: int = 2,
        class_names: list[str] | None = None,
        image_size: int = 150,
        head_hidden: int = 256,
        dropout: float = 0.5,
        pool: Pool = "flatten",
        freeze_backbone: bool = True,
        optimizer: str = "rmsprop",
        lr: float = 2e-5,
        weight_decay: float = 0.0,
        scheduler: Schedule = "none",
        warmup_epochs: float = 0.0,
        channels_last: bool = True,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        if class_names is None:
            class_names = [f"class_{index}" for index in range(num_classes)]
        if len(class_names) != num_classes:
            raise UserError(f"num_classes={num_classes} but {len(class_names)} class names: {class_names}")
        if num_classes < 2:
            raise UserError(f"num_classes={num_classes}; a classifier needs at least 2 classes")
        optimizer_class(optimizer)  # an unknown name stops here, not after the first epoch's set-up
        if scheduler != "none" and lr <= 0:
            raise UserError(f"--model.scheduler {scheduler} scales model.lr, which is {lr}; use a positive lr")
        if warmup_epochs < 0:
            raise UserError(f"--model.warmup_epochs {warmup_epochs}: use a number of epochs >= 0")
        self.save_hyperparameters(ignore=["init_from"])
        self.class_names = list(class_names)
        self.backbone: Backbone = create_backbone(backbone, "none" if init_from else weights)
        self.head = Head(self.backbone.output_shape(image_size), num_classes, head_hidden, dropout, pool)
        if init_from:
            self.init_from_checkpoint(init_from)
        if freeze_backbone:
            set_trainable(self.backbone, False)
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone.to(memory_format=self.layout)
        self.loss = nn.CrossEntropyLoss()
        # validate_args and nan checks would make every step wait for the GPU; labels come from the
        # data module's class folders, so they are always in range
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        # epoch losses as torchmetrics means, summed over processes exactly: Lightning's own mean under
        # sync_dist divides the image count in integers, wrong when processes' shares differ by one
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self._logged: set[str] = set()
        self._schedule_steps: int | None = None  # this fit's plan (schedule_steps), saved in checkpoints
        self._resumed_schedule_steps: int | None = None  # the plan of the checkpoint a fit resumes from

    def init_from_checkpoint(self, path: str) -> None:
        """Copy backbone + head weights from a checkpoint of the same backbone, classes and head."""
        checkpoint = read_model_checkpoint(path)
        theirs = checkpoint["hyper_parameters"]
        for key in ("backbone", "class_names"):
            if theirs.get(key) != self.hparams[key]:
                raise UserError(
                    f"--model.init_from {path!r} was trained with {key}={theirs.get(key)!r}, this model "
                    f"has {key}={self.hparams[key]!r}; pick a checkpoint of the same backbone and classes"
                )
        own = self.state_dict()
        state = checkpoint["state_dict"]
        if state.keys() != own.keys() or any(state[key].shape != own[key].shape for key in own):
            shape_keys = ("head_hidden", "pool", "image_size")
            raise UserError(
                f"--model.init_from {path!r} has another head shape "
                f"({', '.join(f'{k}={theirs.get(k)!r}' for k in shape_keys)}; this model: "
                f"{', '.join(f'{k}={self.hparams[k]!r}' for k in shape_keys)}); use the same values"
            )
        self.load_state_dict(state)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """``--ckpt_path`` restores: checkpoints written before the head had named parts load too; the
        schedule's planned length is kept to check a resumed fit against (:meth:`schedule_steps`)."""
        checkpoint["state_dict"] = upgrade_head_keys(checkpoint["state_dict"])
        self._resumed_schedule_steps = checkpoint.get("schedule_steps")

    @property
    def preprocessing(self) -> Preprocessing:
        """The backbone's preprocessing: how raw images must be turned into ``forward`` input."""
        return self.backbone.spec.preprocessing

    @property
    def image_size(self) -> int:
        """The square input size the model was trained at (fixes the head for ``pool="flatten"``)."""
        return self.hparams.image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized images (N, 3, H, W) -> logits (N, num_classes)."""
        return self.head(self.backbone(images.contiguous(memory_format=self.layout)))

    def train(self, mode: bool = True) -> TransferClassifier:
        """Frozen BatchNorm layers stay in eval mode, so their ImageNet statistics are kept."""
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, BATCH_NORMS) and not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    def on_train_epoch_start(self) -> None:
        """Apply :meth:`train` at every epoch start: Lightning 2.6 never calls it when fitting, and
        fine-tuning stages change which BatchNorm layers are frozen."""
        self.train()
        self._logged.discard("train")

    def on_validation_epoch_start(self) -> None:
        self._logged.discard("val")

    def on_test_epoch_start(self) -> None:
        self._logged.discard("test")

    def pool(self, features: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
        """Backbone features -> float32 input of the head's classifier (the head's ``pool`` step).

        The step has no weights, so fast feature extraction runs it once over the cached features
        instead of at every step of every epoch. Chunked: with ``pool="avg"`` a float32 copy of all
        the feature maps never exists.
        """
        with torch.no_grad():
            return torch.cat([self.head.pool(chunk.float()) for chunk in features.split(chunk_size)])

    def logits(self, batch: dict) -> torch.Tensor:
        """Batches carry either images or, with fast feature extraction, :meth:`pool` ed features."""
        if "pooled_features" in batch:
            return self.head.classifier(batch["pooled_features"])
        return self(batch["image"])

    def _step(self, batch: dict, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and accuracy accumulated per epoch, over every process's share; returns (loss, logits)."""
        logits = self.logits(batch)
        loss = self.loss(logits, batch["label"])
        mean_loss, accuracy = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        # update, not forward: only epoch values are logged, and forward also computes each batch's own;
        # the weight is made on the loss's device: a Python number would be copied there at every step
        mean_loss.update(loss.detach(), weight=torch.full_like(loss.detach(), len(batch["label"])))
        accuracy.update(logits, batch["label"])
        if stage not in self._logged:
            # Once per epoch: Lightning computes a logged metric object (syncing processes) and resets it at
            # the epoch's end, and each self.log call costs about as much as a small head's whole step.
            self.log(f"{stage}_loss", mean_loss, prog_bar=True, on_epoch=True, on_step=False)
            self.log(f"{stage}_acc", accuracy, prog_bar=True, on_epoch=True, on_step=False)
            self._logged.add(stage)
        return loss, logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Softmax in float32: under bf16-mixed the logits are bf16, whose 8-bit mantissa would round
        the probabilities themselves (rows would no longer sum to 1)."""
        return logits.detach().float().softmax(dim=1)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        """Returns probabilities and labels so callbacks (the test report) see every prediction."""
        _, logits = self._step(batch, "test")
        return {"probabilities": self.probabilities(logits), "label": batch["label"]}

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"path": batch["path"], "probabilities": self.probabilities(self.logits(batch))}

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        trainable = [p for p in self.parameters() if p.requires_grad]
        if not trainable:
            raise UserError("nothing to train: every parameter is frozen")
        optimizer_type = optimizer_class(self.hparams.optimizer)
        groups = [{"params": trainable, "name": "head"}]  # named: LearningRateMonitor logs lr-<Opt>/head
        optimizer = optimizer_type(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.scheduler == "none":
            return optimizer
        total, warmup = self.schedule_steps()
        scheduler = build_scheduler(optimizer, self.hparams.scheduler, total, warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def schedule_steps(self) -> tuple[int, int]:
        """(optimizer steps of the whole fit, warm-up steps); a resumed fit must plan as many steps as
        its checkpoint: the restored scheduler state keeps the old plan, and a longer run would step
        one-cycle past its end or cosine back up."""
        total, warmup = plan_steps(self.trainer, self.hparams.scheduler, self.hparams.warmup_epochs)
        planned = self._resumed_schedule_steps
        if planned is not None and planned != total:
            raise UserError(f"--ckpt_path: that run's {self.hparams.scheduler} schedule spans {planned} steps, "
                            f"this one {total}; resume with the same --trainer.max_epochs, --trainer.devices, "
                            "--data.batch_size and data, or start a new fit from it with --model.init_from")
        self._schedule_steps = total
        return total, warmup

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._schedule_steps is not None:
            checkpoint["schedule_steps"] = self._schedule_steps


def read_model_checkpoint(path: str | Path) -> dict:
    """A checkpoint (read safely by ``read_checkpoint``) whose hyperparameters ``TransferClassifier``
    accepts, with its state dict in the current key layout."""
    checkpoint = read_checkpoint(path)
    unknown = sorted(checkpoint["hyper_parameters"].keys() - inspect.signature(TransferClassifier).parameters.keys())
    if unknown:
        raise UserError(
            f"{str(path)!r} was written by another model (hyperparameters {unknown} are not "
            "TransferClassifier's); pass a .ckpt written by `lightning-transfer fit`"
        )
    checkpoint["state_dict"] = upgrade_head_keys(checkpoint["state_dict"])
    return checkpoint


def load_model(path: str | Path) -> TransferClassifier:
    """Rebuild the classifier from a checkpoint alone, in eval mode on the CPU.

    The backbone is built without pretrained weights (the checkpoint holds the trained ones), so
    loading works offline.
    """
    checkpoint = read_model_checkpoint(path)
    model = TransferClassifier(**{**checkpoint["hyper_parameters"], "weights": "none"})
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise UserError(f"{str(path)!r} does not match its own hyperparameters: {err}") from None
    return model.eval()
