"""Fully convolutional patch discriminators for output-level domain adaptation (ADVENT / DenseMTL MTL-UDA).

One discriminator is trained per (task, scale) pair: it reads a task's processed prediction map (entropy map,
normalised depth, unit normals or edge probabilities, see :mod:`mtlda.losses.adversarial`) and returns one
domain logit per 32x32 patch.

The official DenseMTL discriminator flips its whole input batch at random (p = 0.5) as a first layer and
spectral-normalises every convolution; both are options here (``flip_input``, ``spectral_norm``; the paper's UDA
experiments turn both on), off by default as in ADVENT. The flip applies in training mode only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

NUM_DOWNSAMPLINGS = 5
OUTPUT_STRIDE = 2**NUM_DOWNSAMPLINGS
LEAKY_SLOPE = 0.2


def discriminator_key(task_name: str, scale: int) -> str:
    """Name of the discriminator aligning ``task_name`` predictions at ``scale``, e.g. ``"semseg_s0"``."""
    return f"{task_name}_s{scale}"


class PatchDiscriminator(nn.Module):
    """Five 4x4 stride-2 convolutions (b, 2b, 4b, 8b, 1 channels) with LeakyReLU(0.2) between them.

    Input (B, in_channels, H, W) with H, W >= 32; output (B, 1, H/32, W/32) raw domain logits (no activation).
    ``flip_input``: in training mode the whole input batch is mirrored left-right with probability 0.5.
    """

    def __init__(self, in_channels: int, base_channels: int = 64, spectral_norm: bool = False,
                 flip_input: bool = False) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1:
            raise ValueError(
                f"PatchDiscriminator needs positive channel counts, got in_channels={in_channels}, "
                f"base_channels={base_channels}"
            )
        self.in_channels = in_channels
        self.flip_input = flip_input
        widths = [in_channels] + [base_channels * 2**i for i in range(NUM_DOWNSAMPLINGS - 1)] + [1]
        convs = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            conv = nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
            convs.append(apply_spectral_norm(conv) if spectral_norm else conv)
        self.convs = nn.ModuleList(convs)
        self.activation = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchDiscriminator expects (B, {self.in_channels}, H, W) inputs, got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < OUTPUT_STRIDE:
            raise ValueError(
                f"PatchDiscriminator needs inputs of at least {OUTPUT_STRIDE}x{OUTPUT_STRIDE} pixels, got "
                f"{tuple(x.shape[-2:])}; upsample the prediction to the input resolution first"
            )
        if self.flip_input and self.training and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        for conv in self.convs[:-1]:
            x = self.activation(conv(x))
        return self.convs[-1](x)


def build_discriminators(
    task_channels: dict[str, int],
    scales: Sequence[int],
    spectral_norm: bool = False,
    base_channels: int = 64,
    flip_input: bool = False,
) -> nn.ModuleDict:
    """One :class:`PatchDiscriminator` per (task, scale), keyed ``discriminator_key(task, scale)``.

    ``task_channels`` maps a task name to the channel count of its discriminator input, which equals its head's
    output channels (semseg: number of classes; depth: 1; normals: 3; edges: 1). Tasks and scales are created
    in sorted order, independent of how they were listed.
    """
    if not task_channels:
        raise ValueError("build_discriminators needs at least one task in task_channels")
    if not scales:
        raise ValueError("build_discriminators needs at least one scale (e.g. uda.adv_scales: [0, 1])")
    if len(set(scales)) != len(scales) or any(s < 0 for s in scales):
        raise ValueError(f"scales must be distinct non-negative integers, got {list(scales)}")
    return nn.ModuleDict(
        {
            discriminator_key(task, scale): PatchDiscriminator(task_channels[task], base_channels, spectral_norm,
                                                               flip_input)
            for task in sorted(task_channels)
            for scale in sorted(scales)
        }
    )
