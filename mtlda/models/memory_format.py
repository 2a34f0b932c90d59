"""The channels_last memory format (``train.channels_last``) for a network and its inputs.

In channels_last a (B, C, H, W) tensor is stored as (B, H, W, C): convolution kernels (oneDNN on the CPU, cuDNN
with tensor cores) read it without layout conversions. Every layer of the encoder, decoders and exchange blocks
keeps the format (convolutions, BatchNorm, padding, pooling, interpolation, concatenation, and the xTAM token
reshapes, whose (B, N, C) token matrices are then already contiguous for ``scaled_dot_product_attention``), and
results equal those of the default format to float rounding. Only the storage changes: shapes, indexing and
state-dict keys do not, and checkpoints load into either format.

One exception, on the CPU only: a :class:`DefaultFormatOnCPU` module (ASPP) runs in the default format there. Its
wide-input convolutions on a small map (2048 -> 256 channels at stride 16) are slower in oneDNN's channels_last
kernels, which also reorder each 19 MB weight in the forward pass and its gradient in the backward pass: on the
paper's S-D step at 128x256 those copies took ~17 % of the step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class DefaultFormatOnCPU(nn.Module):
    """A module that keeps the default format on the CPU inside a channels_last network: :func:`to_channels_last`
    leaves its parameters contiguous there, and its forward runs through :meth:`in_default_format`."""

    def in_default_format(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``fn(x)``; on the CPU computed on ``x`` in the default format and returned in ``x``'s format."""
        if x.device.type != "cpu" or x.is_contiguous():
            return fn(x)
        return fn(x.contiguous()).contiguous(memory_format=torch.channels_last)


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D parameters and buffers converted to channels_last, in place (same Parameter objects),
    except those of :class:`DefaultFormatOnCPU` modules on the CPU.

    Convert before building the optimiser, so that its state tensors are created in the same format.
    """
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, DefaultFormatOnCPU) and all(p.device.type == "cpu" for p in module.parameters()):
            module.to(memory_format=torch.contiguous_format)
    return model


def channels_last_input(image: Tensor) -> Tensor:
    """A (B, C, H, W) tensor stored channels_last (same values; a no-op if it already is)."""
    return image.contiguous(memory_format=torch.channels_last)
