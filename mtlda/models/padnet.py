"""The original PAD-Net head of one task (Xu et al. 2018), the paper's "PAD-Net" baseline.

Per task: two bottlenecks on the stride-16 encoder map with an initial prediction (scale 4), then, after the
PAD-Net distillation block at 256 channels (:class:`~mtlda.models.exchange.PadNetBlock`), two more bottlenecks and
a final prediction bilinearly upsampled to the input (scale 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from mtlda.models.checkpointing import run_segment
from mtlda.models.decoder import HeadSpec, side_head

PADNET_CHANNELS = 256
PADNET_SCALES = (0, 4)


class PadNetDecoder(nn.Module):
    """Original PAD-Net head of one task on the stride-16 encoder map.

    ``blocks["4"]``: 2 bottlenecks (in -> 256, stride 16), side scale 4 (initial prediction, optional);
    ``blocks["0"]``: 2 bottlenecks, side scale 0 bilinearly upsampled x``output_stride`` to the input size.
    ``checkpoint_blocks``: recompute each block's activations in the backward pass.
    """

    def __init__(self, in_channels: int, output_stride: int, head: HeadSpec, checkpoint_blocks: bool = False) -> None:
        super().__init__()
        if not set(head.scales) <= set(PADNET_SCALES) or 0 not in head.scales:
            raise ValueError(
                f"architecture padnet predicts at scales 0 (final) and 4 (initial, optional); got scales "
                f"{list(head.scales)}. Set the task's scales to [0, 4] or [0]."
            )
        if output_stride != 2 ** PADNET_SCALES[-1]:
            raise ValueError(
                f"architecture padnet needs the last encoder map at stride 16, got {output_stride}; use dilation "
                f"[False, False, True]."
            )
        width = PADNET_CHANNELS // Bottleneck.expansion
        shortcut = nn.Sequential(
            nn.Conv2d(in_channels, PADNET_CHANNELS, 1, bias=False), nn.BatchNorm2d(PADNET_CHANNELS)
        )
        self.head = head
        self.output_stride = output_stride
        self.checkpoint_blocks = checkpoint_blocks
        self.blocks = nn.ModuleDict(
            {
                "4": nn.Sequential(
                    Bottleneck(in_channels, width, downsample=shortcut), Bottleneck(PADNET_CHANNELS, width)
                ),
                "0": nn.Sequential(Bottleneck(PADNET_CHANNELS, width), Bottleneck(PADNET_CHANNELS, width)),
            }
        )
        self.sides = nn.ModuleDict({str(s): side_head(PADNET_CHANNELS, head) for s in sorted(head.scales)})

    def run(
        self, features: Sequence[Tensor], first: int, last: int, x: Tensor | None = None
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Blocks ``first``..``last`` (only "4" and "0" exist) -> (features (B, 256, H/16, W/16), {scale: output})."""
        if x is None:
            x = features[4]
        outputs = {}
        for name in ("4", "0"):
            if not first >= int(name) >= last:
                continue
            x = run_segment(self.blocks[name], x, checkpointed=self.checkpoint_blocks)
            if name in self.sides:
                prediction = self.sides[name](x)
                if name == "0":
                    prediction = F.interpolate(
                        prediction, scale_factor=self.output_stride, mode="bilinear", align_corners=False
                    )
                outputs[int(name)] = prediction
        return x, outputs
