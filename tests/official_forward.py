"""Independent functional forwards of the official DenseMTL network and of the 3-ways depth and pose networks,
reading tensors by their official names.

Written from the description of the official code in the reference notes (sections 1.2-1.6), not from that code:
encoder with (x - 0.45) / 0.225 and torchvision's ResNet (layer4 dilated), positional 3-ways decoders (ASPP with
image pooling, ELU ConvBlocks with reflection padding, nearest x2 upsampling decided by comparing widths, 1x1
prediction layers at ``active_scales``), and the mTEB of stage 1 (extractor, SA branch, SxTAM with a
nearest-subsampled query and max-pooled keys and values, softmax(QK^T / sqrt(C)), alpha, proj, post in a given
fusion order, residual add); the 3-ways depth decoder is the same decoder with sigmoid reflection-padded 3x3
prediction layers, its pose net a 6-channel ResNet-18 with Monodepth2's pose decoder (squeeze, two 3x3 convs, 1x1 to
12, spatial mean, x 0.01, first of two poses). Eval mode only. Also builds random state dicts in the official layout.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

BN_EPS = 1e-5
NUM_CH_ENC = (64, 256, 512, 1024, 2048)
STAGE_DOWNSCALE = {4: 1, 3: 1, 2: 2, 1: 4, 0: 8}  # notes 1.4, OursAtt.stage_nb


def batch_norm(x: Tensor, state: Mapping[str, Tensor], prefix: str) -> Tensor:
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=BN_EPS)


def conv(x: Tensor, state: Mapping[str, Tensor], prefix: str, **kwargs) -> Tensor:
    return F.conv2d(x, state[f"{prefix}.weight"], state.get(f"{prefix}.bias"), **kwargs)


def conv_bn_relu(x: Tensor, state: Mapping[str, Tensor], conv_prefix: str, bn_prefix: str, **kwargs) -> Tensor:
    return F.relu(batch_norm(conv(x, state, conv_prefix, **kwargs), state, bn_prefix))


# ------------------------------------------------------------------------------------------------ encoder
def _bottleneck(x: Tensor, state: Mapping[str, Tensor], prefix: str, stride: int, dilation: int) -> Tensor:
    out = conv_bn_relu(x, state, f"{prefix}.conv1", f"{prefix}.bn1")
    out = conv_bn_relu(out, state, f"{prefix}.conv2", f"{prefix}.bn2", stride=stride, padding=dilation,
                       dilation=dilation)
    out = batch_norm(conv(out, state, f"{prefix}.conv3"), state, f"{prefix}.bn3")
    shortcut = x
    if f"{prefix}.downsample.0.weight" in state:
        shortcut = batch_norm(conv(x, state, f"{prefix}.downsample.0", stride=stride), state, f"{prefix}.downsample.1")
    return F.relu(out + shortcut)


def _basic_block(x: Tensor, state: Mapping[str, Tensor], prefix: str, stride: int, dilation: int) -> Tensor:
    out = conv_bn_relu(x, state, f"{prefix}.conv1", f"{prefix}.bn1", stride=stride, padding=1)
    out = batch_norm(conv(out, state, f"{prefix}.conv2", padding=1), state, f"{prefix}.bn2")
    shortcut = x
    if f"{prefix}.downsample.0.weight" in state:
        shortcut = batch_norm(conv(x, state, f"{prefix}.downsample.0", stride=stride), state, f"{prefix}.downsample.1")
    return F.relu(out + shortcut)


def encoder_forward(state: Mapping[str, Tensor], image: Tensor, p: str = "backbone.encoder",
                    dilate_layer4: bool = True) -> list[Tensor]:
    """Official ResNet encoder under prefix ``p`` (layer4: stride 1, dilation 2 after its first block, when
    ``dilate_layer4``) -> 5 maps. Bottleneck or basic blocks, told apart by a ``conv3`` weight."""
    block = _bottleneck if f"{p}.layer1.0.conv3.weight" in state else _basic_block
    x = (image - 0.45) / 0.225
    f0 = conv_bn_relu(x, state, f"{p}.conv1", f"{p}.bn1", stride=2, padding=3)
    x = F.max_pool2d(f0, 3, stride=2, padding=1)
    features = [f0]
    dilation = 1
    for layer, (stride, dilate) in enumerate([(1, False), (2, False), (2, False), (2, dilate_layer4)], start=1):
        blocks = sorted({int(m.group(1)) for k in state if (m := re.match(rf"{p}\.layer{layer}\.(\d+)\.", k))})
        previous = dilation
        if dilate:
            dilation, stride = dilation * stride, 1
        for index in blocks:
            x = block(x, state, f"{p}.layer{layer}.{index}", stride if index == 0 else 1,
                            previous if index == 0 else dilation)
        features.append(x)
    return features


# ------------------------------------------------------------------------------------------------ decoder
def decoder_positions(n_upconv: int = 4) -> dict[tuple, int]:
    """Module position of every decoder entry in the official construction order (notes 1.3)."""
    order: list[tuple] = []
    for i in range(n_upconv, -1, -1):
        order.append(("upconv", i, 0))
        if i > 0:
            order.append(("skip_proj", i))
        order.append(("upconv", i, 1))
    return {name: index for index, name in enumerate(order)}


def _conv_block(x: Tensor, state: Mapping[str, Tensor], prefix: str) -> Tensor:
    return F.elu(conv(F.pad(x, (1, 1, 1, 1), mode="reflect"), state, f"{prefix}.block.0.conv"))


def _aspp(x: Tensor, state: Mapping[str, Tensor], prefix: str, rates: Sequence[int] = (6, 12, 18)) -> Tensor:
    branches = [conv_bn_relu(x, state, f"{prefix}.convs.0.0", f"{prefix}.convs.0.1")]
    for k, rate in enumerate(rates, start=1):
        branches.append(conv_bn_relu(x, state, f"{prefix}.convs.{k}.0", f"{prefix}.convs.{k}.1", padding=rate,
                                     dilation=rate))
    pooled = conv_bn_relu(F.adaptive_avg_pool2d(x, 1), state, f"{prefix}.convs.4.1", f"{prefix}.convs.4.2")
    branches.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
    return conv_bn_relu(torch.cat(branches, dim=1), state, f"{prefix}.project.0", f"{prefix}.project.1")


def _side(x: Tensor, state: Mapping[str, Tensor], prefix: str) -> Tensor:
    if f"{prefix}.conv.weight" in state:
        return torch.sigmoid(conv(F.pad(x, (1, 1, 1, 1), mode="reflect"), state, f"{prefix}.conv"))
    return conv(x, state, prefix)


def decoder_blocks(state: Mapping[str, Tensor], prefix: str, features: Sequence[Tensor], blocks: Sequence[int],
                   active_scales: Sequence[int], x: Tensor | None = None) -> tuple[Tensor, dict[int, Tensor]]:
    """Run the official decoder blocks ``blocks`` (descending) under ``prefix`` (``heads.<task>.decoder``) ->
    (features, {scale: output})."""
    positions = decoder_positions()
    first_side = len(positions)
    x = features[-1] if x is None else x
    outputs = {}
    for i in blocks:
        reduce = f"{prefix}.{positions['upconv', i, 0]}"
        x = _aspp(x, state, reduce) if i == 4 else _conv_block(x, state, reduce)
        if i == 0 or x.shape[-1] < features[i - 1].shape[-1]:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if i > 0:
            x = torch.cat([x, features[i - 1]], dim=1)
        x = _conv_block(x, state, f"{prefix}.{positions['upconv', i, 1]}")
        if i in active_scales:
            outputs[i] = _side(x, state, f"{prefix}.{first_side + list(active_scales).index(i)}")
    return x, outputs


# --------------------------------------------------------------------------------------------------- mTEB
def _sxtam(x: Tensor, y: Tensor, state: Mapping[str, Tensor], prefix: str, ds: int) -> Tensor:
    query = conv_bn_relu(F.interpolate(x, scale_factor=1 / ds, mode="nearest"), state, f"{prefix}.conv_b.0",
                         f"{prefix}.conv_b.1")
    pooled = F.max_pool2d(y, ds)
    key = conv_bn_relu(pooled, state, f"{prefix}.conv_c.0", f"{prefix}.conv_c.1")
    value = conv_bn_relu(pooled, state, f"{prefix}.conv_d.0", f"{prefix}.conv_d.1")
    batch, channels, height, width = query.shape
    q = query.flatten(2).transpose(1, 2)  # (B, Nq, C)
    k, v = key.flatten(2), value.flatten(2)  # (B, C, Nk)
    weights = torch.softmax(q @ k / math.sqrt(channels), dim=-1)  # (B, Nq, Nk)
    out = (v @ weights.transpose(1, 2)).reshape(batch, channels, height, width)
    return F.interpolate(out, scale_factor=ds, mode="nearest") * state[f"{prefix}.alpha"]


def mteb_forward(state: Mapping[str, Tensor], features: Mapping[str, Tensor], stage: int,
                 fusion_order: Mapping[str, Sequence[str]]) -> dict[str, Tensor]:
    """The official mTEB (flags SA, SxTAM, add) on ``features`` (task -> (B, C, H, W)) with the given per-target
    source concatenation order."""
    refined = {}
    for target, sources in fusion_order.items():
        directional = []
        for source in sources:
            p = f"m.{target}.{stage}"
            extracted = F.relu(conv(features[source], state, f"{p}.extract_{source}.0", padding=1))
            sa = (conv(extracted, state, f"{p}.SA_{source}.conv", padding=1)
                  * torch.sigmoid(conv(extracted, state, f"{p}.SA_{source}.attention.0", padding=1)))
            cross = _sxtam(features[target], extracted, state, f"{p}.SxTAM_{source}", STAGE_DOWNSCALE[stage])
            directional.append(conv_bn_relu(torch.cat([sa, cross], dim=1), state, f"{p}.proj_{source}.0",
                                            f"{p}.proj_{source}.1"))
        post = conv_bn_relu(torch.cat(directional, dim=1), state, f"m.{target}.{stage}.post.0",
                            f"m.{target}.{stage}.post.1")
        refined[target] = features[target] + post
    return refined


@torch.no_grad()
def official_forward(state: Mapping[str, Tensor], image: Tensor, fusion_order: Mapping[str, Sequence[str]],
                     active_scales: Sequence[int] = (0, 1), stage: int = 1) -> dict[tuple[str, int], Tensor]:
    """(B, 3, H, W) RGB in [0, 1] -> {(task, scale): raw output} of the official model (mTEB at ``stage``)."""
    features = encoder_forward(state, image)
    tasks = sorted(fusion_order)
    states, outputs = {}, {}
    for task in tasks:
        states[task], sides = decoder_blocks(state, f"heads.{task}.decoder", features, range(4, stage - 1, -1),
                                             active_scales)
        outputs.update({(task, s): out for s, out in sides.items()})
    states = mteb_forward(state, states, stage, fusion_order)
    for task in tasks:
        _, sides = decoder_blocks(state, f"heads.{task}.decoder", features, range(stage - 1, -1, -1), active_scales,
                                  states[task])
        outputs.update({(task, s): out for s, out in sides.items()})
    return outputs


@torch.no_grad()
def threeways_depth_forward(encoder: Mapping[str, Tensor], depth: Mapping[str, Tensor], image: Tensor,
                            scales: Sequence[int] = (0, 1, 2, 3)) -> dict[int, Tensor]:
    """3-ways encoder.pth + depth.pth: (B, 3, H, W) -> {scale: sigmoid disparity (B, 1, H/2**s, W/2**s)}."""
    features = encoder_forward(encoder, image, "encoder")
    return decoder_blocks(depth, "decoder", features, range(4, -1, -1), scales)[1]


@torch.no_grad()
def threeways_pose_forward(encoder: Mapping[str, Tensor], decoder: Mapping[str, Tensor], frame_a: Tensor,
                           frame_b: Tensor) -> tuple[Tensor, Tensor]:
    """3-ways pose_encoder.pth + pose.pth on a temporally ordered pair -> (axis-angle (B, 3), translation (B, 3)) of
    the first predicted pose."""
    last = encoder_forward(encoder, torch.cat([frame_a, frame_b], dim=1), "encoder", dilate_layer4=False)[-1]
    x = F.relu(conv(last, decoder, "net.0"))
    x = F.relu(conv(x, decoder, "net.1", padding=1))
    x = F.relu(conv(x, decoder, "net.2", padding=1))
    out = 0.01 * conv(x, decoder, "net.3").mean(3).mean(2).view(-1, 2, 1, 6)
    return out[:, 0, 0, :3], out[:, 0, 0, 3:]


# ---------------------------------------------------------------------------------------------- random state
def random_official_state(tensors: Sequence[tuple[str, Sequence[int], str]], seed: int = 0) -> dict[str, Tensor]:
    """Random tensors for every (name, shape, dtype) of an official manifest, at scales that keep a ResNet-101
    forward finite: convs ~ N(0, 1/fan_in), BN affine and running statistics randomised (variances > 0), alpha
    non-zero, larger gains on the SxTAM query and key so that the attention is far from uniform. ``params.*``
    aliases are the very tensors of their originals, as in a saved official model."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for name, shape, dtype in tensors:
        match = re.fullmatch(r"params\.(\w+?)\.([01])\.(.+)", name)
        if match:
            task, which, rest = match.groups()
            state[name] = state[f"{'heads' if which == '0' else 'm'}.{task}.{rest}"]
            continue
        if dtype == "int64":
            state[name] = torch.randint(0, 1000, shape, generator=generator)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        elif name.endswith("alpha"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        elif re.search(r"SxTAM_\w+\.conv_[bc]\.1\.weight$", name):
            state[name] = torch.rand(shape, generator=generator) * 2.0 + 2.0  # peaked attention: queries matter
        elif name.endswith("weight"):
            state[name] = torch.rand(shape, generator=generator) * 0.5 + 0.5
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.1
    return state
