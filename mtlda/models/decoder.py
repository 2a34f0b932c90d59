"""The "3-ways" task decoder: ASPP on the last encoder map, then upsampling blocks 4..0 with skip connections.

Block ``i`` ("reduce" conv, nearest x2 upsampling where the stride halves, concatenation with encoder map ``i-1``,
"fuse" conv) outputs features at stride ``2**i`` of the input (for block 4: the stride of encoder map 3). The side
output of scale ``s`` is the head applied to the output of block ``s``. Blocks can be run in ranges so that an
exchange block can sit between block ``s`` and block ``s-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlda.models.checkpointing import run_segment
from mtlda.models.memory_format import DefaultFormatOnCPU

NUM_BLOCKS = 5


@dataclass(frozen=True)
class HeadSpec:
    """Prediction head of one task: ``out_channels`` per pixel, emitted at each scale in ``scales``.

    ``apply_sigmoid``: 3x3 reflection-padded conv + sigmoid (SDE disparity); otherwise a 1x1 conv with bias and raw
    output (logits, scaled inverse depth, unnormalised normals, edge logits).
    """

    out_channels: int
    scales: tuple[int, ...]
    apply_sigmoid: bool = False


def conv3x3_elu(in_channels: int, out_channels: int) -> nn.Sequential:
    """Reflection-padded 3x3 conv with bias, then ELU: (B, in, H, W) -> (B, out, H, W)."""
    return nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3), nn.ELU(inplace=True)
    )


def side_head(in_channels: int, spec: HeadSpec) -> nn.Module:
    """Prediction layer of ``spec`` on (B, in_channels, h, w) features -> (B, spec.out_channels, h, w)."""
    if spec.apply_sigmoid:
        return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(in_channels, spec.out_channels, 3), nn.Sigmoid())
    return nn.Conv2d(in_channels, spec.out_channels, 1)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LayoutInvariantDropout(nn.Dropout):
    """``nn.Dropout`` whose mask is drawn in (B, C, H, W) order whatever the input's memory format.

    ``nn.Dropout`` draws its mask in storage order, so a channels_last tensor would drop other elements than the
    same tensor in the default format for one RNG state; this keeps the two formats' training results equal. The
    output keeps the input's memory format.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or x.is_contiguous():
            return super().forward(x)
        return torch.empty_like(x).copy_(super().forward(x.contiguous()))


class ASPP(DefaultFormatOnCPU):
    """Atrous spatial pyramid pooling: (B, in, H, W) -> (B, out, H, W).

    Branches: 1x1 conv, one 3x3 atrous conv per rate, and image pooling (global mean, 1x1 conv, bilinear back),
    each with BN + ReLU; concatenated, projected by 1x1 conv + BN + ReLU, then dropout. On the CPU it runs in the
    default memory format inside a channels_last network (:class:`DefaultFormatOnCPU`).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], dropout: float = 0.5) -> None:
        super().__init__()
        branches = [_conv_bn_relu(in_channels, out_channels)]
        branches += [_conv_bn_relu(in_channels, out_channels, 3, rate) for rate in rates]
        self.branches = nn.ModuleList(branches)
        self.pool_proj = _conv_bn_relu(in_channels, out_channels)
        self.project = nn.Sequential(
            _conv_bn_relu((len(rates) + 2) * out_channels, out_channels), LayoutInvariantDropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            raise ValueError(
                "ASPP image pooling normalises a (B, C, 1, 1) map with BatchNorm, which needs batch size >= 2 in "
                "training mode; use batch_size >= 2 (or eval() for single-image inference)."
            )
        return self.in_default_format(self._pyramid, x)

    def _pyramid(self, x: Tensor) -> Tensor:
        pooled = self.pool_proj(F.adaptive_avg_pool2d(x, 1))
        pooled = F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DecoderBlock(nn.Module):
    """One decoder block: reduce -> (nearest x``upsample``) -> concat skip -> fuse.

    (B, in, h, w) [+ skip (B, skip, h*u, w*u)] -> (B, out, h*u, w*u).
    """

    def __init__(self, reduce: nn.Module, fuse_in: int, out_channels: int, upsample: int) -> None:
        super().__init__()
        self.reduce = reduce
        self.fuse = conv3x3_elu(fuse_in, out_channels)
        self.upsample = upsample

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = self.reduce(x)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.fuse(x)


def decoder_block_strides(encoder_strides: Sequence[int]) -> list[int]:
    """Output stride of decoder blocks 0..4: block i > 0 matches encoder map i-1, block 0 is full resolution."""
    return [1] + list(encoder_strides[:4])


class TaskDecoder(nn.Module):
    """3-ways decoder of one task on the 5 encoder maps.

    ``blocks`` (ModuleDict "4".."0") is the body shared in shape by every task; ``sides`` (ModuleDict by scale) are
    the task's prediction layers. Side output of scale s: (B, head.out_channels, H/2**s, W/2**s).
    ``checkpoint_blocks``: recompute each block's activations in the backward pass (:mod:`mtlda.models.checkpointing`).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        head: HeadSpec,
        channels: Sequence[int] = (64, 128, 128, 256, 256),
        aspp_rates: Sequence[int] = (6, 12, 18),
        aspp_dropout: float = 0.5,
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != NUM_BLOCKS or len(encoder_channels) != NUM_BLOCKS or len(encoder_strides) != NUM_BLOCKS:
            raise ValueError(
                f"decoder needs 5 encoder maps and 5 decoder_channels, got {len(encoder_channels)} maps and "
                f"decoder_channels={list(channels)}."
            )
        self.block_strides = decoder_block_strides(encoder_strides)
        for scale in head.scales:
            if scale not in range(NUM_BLOCKS):
                raise ValueError(f"head scale {scale} is out of range: scales are 0..4 (stride 2**s).")
            if self.block_strides[scale] != 2**scale:
                raise ValueError(
                    f"head scale {scale} needs stride {2**scale}, but with encoder strides {list(encoder_strides)} "
                    f"decoder block {scale} runs at stride {self.block_strides[scale]}; change the dilation or scales."
                )
        self.head = head
        self.checkpoint_blocks = checkpoint_blocks
        blocks = {}
        in_stride = encoder_strides[4]
        for i in reversed(range(NUM_BLOCKS)):
            if i == 4:
                reduce: nn.Module = ASPP(encoder_channels[4], channels[4], aspp_rates, aspp_dropout)
            else:
                reduce = conv3x3_elu(channels[i + 1], channels[i])
            upsample = in_stride // self.block_strides[i]
            if upsample not in (1, 2) or upsample * self.block_strides[i] != in_stride:
                raise ValueError(
                    f"decoder block {i} would go from stride {in_stride} to {self.block_strides[i]}; only x1 or x2 "
                    f"steps are supported (encoder strides {list(encoder_strides)})."
                )
            skip = encoder_channels[i - 1] if i > 0 else 0
            blocks[str(i)] = DecoderBlock(reduce, channels[i] + skip, channels[i], upsample)
            in_stride = self.block_strides[i]
        self.blocks = nn.ModuleDict(blocks)
        self.sides = nn.ModuleDict({str(s): side_head(channels[s], head) for s in sorted(head.scales)})

    def run(
        self, features: Sequence[Tensor], first: int, last: int, x: Tensor | None = None
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Run blocks ``first`` down to ``last`` (inclusive) -> (features after block ``last``, {scale: output}).

        ``x`` is the output of block ``first + 1``; it is taken from the encoder when ``first == 4``.
        Side outputs are computed from each block's output, before any exchange block placed after it.
        """
        if not NUM_BLOCKS > first >= last >= 0:
            raise ValueError(f"block range {first}..{last} is invalid: need 4 >= first >= last >= 0.")
        if (x is None) != (first == 4):
            raise ValueError("pass x (the previous block's output) exactly when first < 4.")
        if x is None:
            x = features[4]
        outputs = {}
        for i in range(first, last - 1, -1):
            skip = features[i - 1] if i > 0 else None
            x = run_segment(self.blocks[str(i)], x, skip, checkpointed=self.checkpoint_blocks)
            if str(i) in self.sides:
                outputs[i] = self.sides[str(i)](x)
        return x, outputs

    def forward(self, features: Sequence[Tensor]) -> dict[int, Tensor]:
        """Encoder maps [f0..f4] -> {scale: (B, out_channels, H/2**s, W/2**s)}."""
        return self.run(features, NUM_BLOCKS - 1, 0)[1]
