"""Monodepth2's pose network: relative camera motion between two frames of a sequence.

A ResNet encoder sees the two RGB frames stacked along channels (6 channels), a small convolutional decoder on
its last feature map predicts one 6-DoF motion (axis-angle rotation in radians, translation in metres, up to the
scale of the depth prediction), averaged over space and multiplied by 0.01 so that training starts near the
identity. Frames are always given in temporal order, so the network learns the motion from the earlier to the
later frame; :meth:`PoseNet.relative_pose` inverts it for past source frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlda.geometry import pose_from_axis_angle
from mtlda.models.encoder import ResNetEncoder

POSE_OUTPUT_SCALE = 0.01


class PoseDecoder(nn.Module):
    """Last encoder map (B, in_channels, h, w) -> one pose (B, 6): axis-angle (3) then translation (3).

    1x1 squeeze to 256 + ReLU, two 3x3 256 -> 256 convs + ReLU, 1x1 to 6, spatial mean, times 0.01.
    ``initial_translation``, when not zero, is the last conv's translation bias (the mean translation output at
    initialisation): (0, 0, -t) starts from forward motion along the optical axis, as a driving camera moves.
    """

    def __init__(self, in_channels: int, initial_translation: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, 256, kernel_size=1)
        self.conv1 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.predict = nn.Conv2d(256, 6, kernel_size=1)
        self.relu = nn.ReLU()
        if len(initial_translation) != 3:
            raise ValueError(f"initial_translation needs 3 values (x, y, z), got {list(initial_translation)}")
        if any(initial_translation):
            with torch.no_grad():
                self.predict.bias[3:] = torch.tensor(initial_translation) / POSE_OUTPUT_SCALE

    def forward(self, features: Tensor) -> Tensor:
        x = self.relu(self.squeeze(features))
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return POSE_OUTPUT_SCALE * self.predict(x).mean(dim=(2, 3))


class PoseNet(nn.Module):
    """Two-frame pose network: ResNet encoder (undilated, 6 input channels) + :class:`PoseDecoder`.

    ``backbone``/``pretrained``/``input_norm`` as in :class:`mtlda.models.encoder.ResNetEncoder` (a pretrained conv1
    is tiled over the two frames and halved).
    """

    def __init__(self, backbone: str = "resnet18", pretrained: str = "none", input_norm: str = "imagenet",
                 initial_translation: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(backbone, pretrained, dilation=(False, False, False), num_frames=2,
                                     input_norm=input_norm)
        self.decoder = PoseDecoder(self.encoder.num_channels[-1], initial_translation)

    def forward(self, frame_a: Tensor, frame_b: Tensor) -> tuple[Tensor, Tensor]:
        """Motion from ``frame_a`` to the later ``frame_b``, both (B, 3, H, W) RGB in [0, 1].

        Returns (axis_angle (B, 3) radians, translation (B, 3)); :func:`mtlda.geometry.pose_from_axis_angle` of
        them maps points of ``frame_a``'s camera into ``frame_b``'s.
        """
        if frame_a.shape != frame_b.shape:
            raise ValueError(
                f"pose frames must share one shape, got {tuple(frame_a.shape)} and {tuple(frame_b.shape)}"
            )
        pose = self.decoder(self.encoder(torch.cat([frame_a, frame_b], dim=1))[-1])
        return pose[:, :3], pose[:, 3:]

    def relative_pose(self, target: Tensor, source: Tensor, offset: int) -> Tensor:
        """T_tgt_to_src (B, 4, 4) for the source frame at temporal ``offset`` (non-zero) from the target.

        The pair goes through the network in temporal order: (target, source) for offset > 0, used as is;
        (source, target) for offset < 0, inverted (R^T, -R^T t) to map target points into the source frame.
        """
        if offset == 0:
            raise ValueError("relative_pose needs a neighbouring frame (offset != 0); offset 0 is the target itself")
        if offset > 0:
            axis_angle, translation = self(target, source)
        else:
            axis_angle, translation = self(source, target)
        return pose_from_axis_angle(axis_angle, translation, invert=offset < 0)
