"""The channels_last memory format (``train.channels_last``) for a network and its inputs.

In channels_last a (B, C, H, W) tensor is stored as (B, H, W, C): convolution kernels (oneDNN on the CPU, cuDNN
with tensor cores) read it without layout conversions. Every layer of the encoder, decoders and exchange blocks
keeps the format (convolutions, BatchNorm, padding, pooling, interpolation, concatenation, and the xTAM token
reshapes, whose (B, N, C) token matrices are then already contiguous for ``scaled_dot_product_attention``), and
results equal those of the default format to float rounding. Only the storage changes: shapes, indexing and
state-dict keys do not, and checkpoints load into either format.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D parameters and buffers converted to channels_last, in place (same Parameter objects).

    Convert before building the optimiser, so that its state tensors are created in the same format.
    """
    return model.to(memory_format=torch.channels_last)


def channels_last_input(image: Tensor) -> Tensor:
    """A (B, C, H, W) tensor stored channels_last (same values; a no-op if it already is)."""
    return image.contiguous(memory_format=torch.channels_last)
