"""TransferClassifier: pretrained conv base + small dense head, one LightningModule for every recipe.

Its hyperparameters (backbone name, image size, class names, head shape) are everything needed to
rebuild it, so one checkpoint drives fit, test, predict, visualize and the demo.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning import LightningModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchmetrics.classification import MulticlassAccuracy

from lightning_transfer.backbones import create_backbone
from lightning_transfer.errors import UserError

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def make_head(
    feature_shape: tuple[int, int, int], num_classes: int, hidden: int, dropout: float, pool: str
) -> nn.Sequential:
    """The book's head: Flatten -> Dense(hidden, relu) -> Dropout -> Dense(classes).

    ``pool="avg"`` averages the feature map first, which keeps the head small for big maps.
    """
    channels, height, width = feature_shape
    if pool == "flatten":
        reduce, in_features = nn.Flatten(1), channels * height * width
    else:
        reduce, in_features = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), channels
    return nn.Sequential(
        reduce,
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad = trainable


class TransferClassifier(LightningModule):
    """Image classifier = pretrained backbone (frozen by default) + dense head.

    Args:
        backbone: registry name (``vgg16``, ``efficientnet_lite0``).
        weights: ``imagenet``, ``none`` (random init) or a state-dict file (.pth/.pt/.safetensors).
        num_classes: number of output classes; set from the data by the CLI.
        class_names: label of each output, stored in the checkpoint; set from the data by the CLI.
        image_size: square input size; fixes the head's input for ``pool="flatten"``.
        head_hidden: width of the dense layer.
        dropout: dropout before the last layer.
        pool: ``flatten`` (the book) or ``avg`` (global average pooling).
        freeze_backbone: train only the head (feature extraction).
        optimizer: ``rmsprop`` (the book), ``adam``, ``adamw`` or ``sgd``.
        lr: learning rate of the head (the book: 2e-5).
        weight_decay: optimizer weight decay.
        channels_last: run the convolutions in channels_last layout, oneDNN's preferred one: CPU
            training steps 1.3-1.9x faster (README, Performance). On GPUs ``false`` avoids cuDNN's
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
        pool: Literal["flatten", "avg"] = "flatten",
        freeze_backbone: bool = True,
        optimizer: Literal["rmsprop", "adam", "adamw", "sgd"] = "rmsprop",
        lr: float = 2e-5,
        weight_decay: float = 0.0,
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
        self.save_hyperparameters(ignore=["init_from"])
        self.class_names = list(class_names)
        self.backbone = create_backbone(backbone, "none" if init_from else weights)
        self.head = make_head(self.backbone.output_shape(image_size), num_classes, head_hidden, dropout, pool)
        if init_from:
            self.init_from_checkpoint(init_from)
        if freeze_backbone:
            set_trainable(self.backbone, False)
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone.to(memory_format=self.layout)
        self.loss = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def init_from_checkpoint(self, path: str) -> None:
        """Copy backbone + head weights from a checkpoint of the same backbone, classes and head."""
        from lightning_transfer.checkpoint import read_checkpoint  # checkpoint.py imports this module

        checkpoint = read_checkpoint(path)
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

    @property
    def preprocessing(self):
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
                if isinstance(module, _BatchNorm) and not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    def on_train_epoch_start(self) -> None:
        """Apply :meth:`train` at every epoch start: Lightning 2.6 never calls it when fitting, and
        fine-tuning stages change which BatchNorm layers are frozen."""
        self.train()

    def pool(self, features: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
        """Backbone features -> float32 input of the head's dense layers (the head's ``pool`` step).

        The step has no weights, so fast feature extraction runs it once over the cached features
        instead of at every step of every epoch (with ``pool="avg"`` that moves 49x less data per
        batch). Chunked: with ``pool="avg"`` a float32 copy of all the feature maps never exists.
        """
        with torch.no_grad():
            return torch.cat([self.head[0](chunk.float()) for chunk in features.split(chunk_size)])

    def logits(self, batch: dict) -> torch.Tensor:
        """Batches carry either images or, with fast feature extraction, :meth:`pool` ed features."""
        if "pooled_features" in batch:
            return self.head[1:](batch["pooled_features"])
        return self(batch["image"])

    def _step(self, batch: dict, stage: str, accuracy: MulticlassAccuracy) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and accuracy logged per epoch; returns (loss, logits)."""
        logits = self.logits(batch)
        loss = self.loss(logits, batch["label"])
        # update, not forward: only epoch values are logged, and forward also computes each batch's own
        accuracy.update(logits, batch["label"])
        batch_size = len(batch["label"])
        # sync_dist: under DDP the epoch loss averages all processes' shares, not only rank 0's
        self.log(f"{stage}_loss", loss, prog_bar=True, on_epoch=True, on_step=False, batch_size=batch_size,
                 sync_dist=True)
        self.log(f"{stage}_acc", accuracy, prog_bar=True, on_epoch=True, on_step=False, batch_size=batch_size)
        return loss, logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)[0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Softmax in float32: under bf16-mixed the logits are bf16, whose 8-bit mantissa would round
        the probabilities themselves (0.9991 became 1.0, and a row summed to 1.001)."""
        return logits.detach().float().softmax(dim=1)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        """Returns probabilities and labels so callbacks (the test report) see every prediction."""
        _, logits = self._step(batch, "test", self.test_acc)
        return {"probabilities": self.probabilities(logits), "label": batch["label"]}

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"path": batch["path"], "probabilities": self.probabilities(self.logits(batch))}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        if not trainable:
            raise UserError("nothing to train: every parameter is frozen")
        optimizer = OPTIMIZERS[self.hparams.optimizer]
        groups = [{"params": trainable, "name": "head"}]  # named: LearningRateMonitor logs lr-<Opt>/head
        return optimizer(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
