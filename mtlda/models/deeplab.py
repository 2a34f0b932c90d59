"""The MTL survey's task head (Vandenhende et al.), which the paper's STL and MTL baselines use (paper section 4.1,
the official STL configs): DeepLabV3's head on the last encoder map, bilinearly upsampled to the input.

ASPP (1x1, three 3x3 atrous convs at ``rates`` (12, 24, 36), image pooling; BN + ReLU each; concatenated, 1x1 +
BN + ReLU + dropout), then a 3x3 conv without bias + BN + ReLU and a 1x1 prediction conv with bias, at the encoder's
output stride (16); the prediction is upsampled x16 (bilinear, ``align_corners=False``) to scale 0. No skips, no
intermediate scales. With 256 channels and ResNet-101 it has the official head's 16,129,552 parameters (16 classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mtlda.models.decoder import ASPP, HeadSpec


class DeepLabDecoder(nn.Module):
    """DeepLabV3 head of one task: encoder map 4 (B, in, H/s, W/s) -> {0: (B, out, H, W)} raw output."""

    def __init__(self, in_channels: int, output_stride: int, head: HeadSpec, channels: int = 256,
                 rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5) -> None:
        super().__init__()
        if tuple(head.scales) != (0,):
            raise ValueError(f"architecture deeplab predicts at scale 0 only; set the task's scales to [0], "
                             f"got {list(head.scales)}")
        self.head = head
        self.output_stride = output_stride
        self.aspp = ASPP(in_channels, channels, rates, dropout)
        self.refine = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                    nn.ReLU(inplace=True))
        self.predict = nn.Conv2d(channels, head.out_channels, 1)

    def run(self, features: Sequence[Tensor], first: int, last: int,
            x: Tensor | None = None) -> tuple[Tensor, dict[int, Tensor]]:
        """The whole head on ``features[4]`` (it has no stages: ``first``/``last`` must span 4..0)."""
        if (first, last) != (4, 0) or x is not None:
            raise ValueError("architecture deeplab has no decoder stages to place an exchange block between")
        out = self.predict(self.refine(self.aspp(features[4])))
        size = tuple(s * self.output_stride for s in features[4].shape[-2:])
        return out, {0: F.interpolate(out, size=size, mode="bilinear", align_corners=False)}
