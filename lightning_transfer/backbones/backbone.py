"""A conv base as named blocks, so fine-tuning stages, visualizations and CLI flags speak the same
words (VGG16: ``block1`` .. ``block5`` and Keras' layer names such as ``block1_conv1``)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from lightning_transfer.backbones.spec import BackboneSpec
from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.runtime import eval_mode


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

    @property
    def cam_layer(self) -> str:
        """The layer Grad-CAM explains: the spec's choice, else the last block (the last conv stage)."""
        return self.spec.cam_layer or self.block_names[-1]

    @torch.no_grad()
    def output_shape(self, image_size: int) -> tuple[int, int, int]:
        """(channels, height, width) of the features for a square input of ``image_size``."""
        device = next(self.parameters()).device
        try:
            with eval_mode(self):
                out = self(torch.zeros(1, 3, image_size, image_size, device=device))
        except (RuntimeError, AssertionError) as err:  # a kernel larger than what is left; timm's size asserts
            raise UserError(
                f"backbone {self.spec.name!r} cannot run on {image_size} px images ({str(err).splitlines()[0]}); "
                f"use a larger --data.image_size (its default is {self.spec.default_image_size})"
            ) from None
        if out.dim() != 4:
            raise UserError(
                f"backbone {self.spec.name!r} gives features of shape {tuple(out.shape[1:])}, not a "
                "(channels, height, width) map; pick a convolutional model"
            )
        return tuple(out.shape[1:])  # type: ignore[return-value]

    def weights_digest(self) -> str:
        """sha256 of the weights themselves, so caches key on what the weights are, not their name."""
        digest = hashlib.sha256()
        for key, tensor in self.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()
