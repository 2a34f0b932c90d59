"""Torchvision ResNet encoder returning the five feature maps of a dense-prediction network.

Feature ``i`` (0..4) is ``relu(bn1(conv1))``, ``layer1(maxpool)``, ``layer2``, ``layer3``, ``layer4``; with the default
dilation ``[False, False, True]`` (layer4 dilated) their strides are 2, 4, 8, 16, 16 for every depth. Images enter as
RGB in [0, 1] and are normalised inside the model (``input_norm``: ImageNet statistics, or the official code's
(x - 0.45) / 0.225; see :data:`mtlda.constants.INPUT_NORMALISATIONS`).

State-dict keys are torchvision's (``conv1.weight``, ``layer1.0.conv1.weight``, ...) without ``fc``, so a torchvision
ResNet checkpoint loads directly.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet

from mtlda.constants import INPUT_NORMALISATIONS
from mtlda.models.checkpointing import run_segment

_BUILDERS = {
    "resnet18": (resnet.resnet18, resnet.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (resnet.resnet34, resnet.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (resnet.resnet50, resnet.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (resnet.resnet101, resnet.ResNet101_Weights.IMAGENET1K_V1),
}
BACKBONES = tuple(_BUILDERS)
_STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


def _dilate_basic_layer(layer: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn a stride-2 BasicBlock layer into a stride-1 dilated one, in place.

    Mirrors torchvision's Bottleneck convention: the first block keeps the dilation of the previous layer and
    loses its stride (in the 3x3 conv and the 1x1 shortcut), the following blocks use the new dilation.
    """
    for index, block in enumerate(layer):
        block_dilation = previous_dilation if index == 0 else dilation
        for conv in (block.conv1, block.conv2):
            conv.stride = (1, 1)
            conv.dilation = (block_dilation, block_dilation)
            conv.padding = (block_dilation, block_dilation)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def _build_resnet(backbone: str, dilation: Sequence[bool]) -> nn.Module:
    builder, _ = _BUILDERS[backbone]
    if backbone in ("resnet50", "resnet101"):
        return builder(weights=None, replace_stride_with_dilation=list(dilation))
    net = builder(weights=None)
    current = 1
    for name, dilate in zip(_STAGE_NAMES[1:], dilation):
        if dilate:
            _dilate_basic_layer(getattr(net, name), current, current * 2)
            current *= 2
    return net


def _imagenet_state_dict(backbone: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights from its cache, or a download where the machine can reach the internet."""
    weights = _BUILDERS[backbone][1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError) as error:
        raise FileNotFoundError(
            f"pretrained: imagenet: the {backbone} ImageNet weights are not cached at {cached} and could not be "
            f"downloaded ({type(error).__name__}: {error}). Fetch {weights.url} on a machine with internet and "
            f"copy it to {cached}, or set `pretrained: /path/to/file.pth` to a local torchvision state dict."
        ) from error


def _local_state_dict(path: str) -> dict[str, Tensor]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"pretrained: {path}: no such file. Give the path of a torchvision ResNet state dict (.pth), "
            f"or 'imagenet' / 'none'."
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"pretrained: {path} could not be read as a tensor state dict ({error}); save it with "
            f"torch.save(model.state_dict(), path)."
        ) from error
    if not isinstance(state, Mapping):
        raise ValueError(f"pretrained: {path} holds a {type(state).__name__}, expected a state dict (name -> tensor).")
    return dict(state)


class ResNetEncoder(nn.Module):
    """ResNet feature extractor: (B, 3*num_frames, H, W) RGB in [0, 1] -> 5 maps (B, num_channels[i], H/s_i, W/s_i).

    ``pretrained``: ``"none"`` (random init), ``"imagenet"`` (torchvision weights: cache or download) or the path of
    a local torchvision ResNet state dict (``fc.*`` keys ignored). With ``num_frames > 1`` (pose network) the input
    stacks that many RGB frames along channels, and a pretrained ``conv1`` is tiled over the frames and divided by
    ``num_frames`` so that the response to identical frames is unchanged. ``checkpoint_stages``: recompute the
    activations of layer1..layer4 in the backward pass, block by block (see :mod:`mtlda.models.checkpointing`).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: str = "none",
        dilation: Sequence[bool] = (False, False, True),
        num_frames: int = 1,
        input_norm: str = "imagenet",
        checkpoint_stages: bool = False,
    ) -> None:
        super().__init__()
        if input_norm not in INPUT_NORMALISATIONS:
            raise ValueError(f"input_norm '{input_norm}' is unknown; choose one of {', '.join(INPUT_NORMALISATIONS)}.")
        if backbone not in _BUILDERS:
            raise ValueError(f"backbone '{backbone}' is unknown; choose one of {', '.join(BACKBONES)}.")
        if len(dilation) != 3:
            raise ValueError(f"dilation must have 3 flags (layer2, layer3, layer4), got {list(dilation)}.")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
        self.backbone = backbone
        self.num_frames = num_frames
        self.checkpoint_stages = checkpoint_stages
        net = _build_resnet(backbone, dilation)
        if num_frames > 1:
            net.conv1 = nn.Conv2d(3 * num_frames, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

        expansion = 4 if backbone in ("resnet50", "resnet101") else 1
        self.num_channels = [64] + [width * expansion for width in (64, 128, 256, 512)]
        strides = [2, 4]
        for dilate in dilation:
            strides.append(strides[-1] if dilate else strides[-1] * 2)
        self.strides = strides

        self.input_norm = input_norm
        image_mean, image_std = INPUT_NORMALISATIONS[input_norm]
        mean = torch.tensor(image_mean).repeat(num_frames).view(1, -1, 1, 1)
        std = torch.tensor(image_std).repeat(num_frames).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

        if pretrained != "none":
            source = _imagenet_state_dict(backbone) if pretrained == "imagenet" else _local_state_dict(pretrained)
            self.load_torchvision_state_dict(source, origin=pretrained)

    def load_torchvision_state_dict(self, state: Mapping[str, Tensor], origin: str = "state dict") -> None:
        """Load a torchvision ResNet state dict (``fc.*`` ignored; conv1 tiled over frames when num_frames > 1)."""
        weights = {key: value for key, value in state.items() if not key.startswith("fc.")}
        conv1 = weights.get("conv1.weight")
        if self.num_frames > 1 and conv1 is not None and conv1.shape[1] == 3:
            weights["conv1.weight"] = conv1.repeat(1, self.num_frames, 1, 1) / self.num_frames
        own = self.state_dict()
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        mismatched = sorted(
            f"{key} {tuple(weights[key].shape)} vs {tuple(own[key].shape)}"
            for key in set(own) & set(weights)
            if weights[key].shape != own[key].shape
        )
        if missing or unexpected or mismatched:
            problems = [
                f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched))
                if keys
            ]
            raise ValueError(
                f"pretrained: {origin} is not a {self.backbone} state dict: {'; '.join(problems)}. "
                f"Use a torchvision {self.backbone} checkpoint (model.state_dict())."
            )
        self.load_state_dict(weights)

    def forward(self, image: Tensor) -> list[Tensor]:
        """(B, 3*num_frames, H, W) in [0, 1] -> [f0 .. f4], f_i (B, num_channels[i], H/strides[i], W/strides[i])."""
        expected = 3 * self.num_frames
        if image.dim() != 4 or image.shape[1] != expected:
            raise ValueError(f"encoder expects a (B, {expected}, H, W) image tensor, got {tuple(image.shape)}.")
        x = (image - self.mean) / self.std
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self._stage(self.layer1, self.maxpool(f0))
        f2 = self._stage(self.layer2, f1)
        f3 = self._stage(self.layer3, f2)
        f4 = self._stage(self.layer4, f3)
        return [f0, f1, f2, f3, f4]

    def _stage(self, layer: nn.Sequential, x: Tensor) -> Tensor:
        for block in layer:
            x = run_segment(block, x, checkpointed=self.checkpoint_stages)
        return x
