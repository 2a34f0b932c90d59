"""Cross-task exchange blocks placed between decoder stages: xTAM, mTEB and PAD-Net distillation.

Every block maps ``dict[task, (B, C, H, W)]`` to refined features of the same shapes. Tasks are always iterated in
sorted order, so outputs do not depend on how the caller listed them.

xTAM (DenseMTL, Eq. 1-4) for one direction source -> target::

    e     = ReLU(conv3x3(f_source))                                   extractor
    self  = F_f(e) * sigmoid(F_m(e))                                  C/2 channels (self-attention)
    xtask = up_s(softmax(Q K^T / sqrt(C)) V)                          C channels (correlation-guided attention)
            Q = query_proj(nearest_s(f_target)), K = key_proj(maxpool_s(e)), V = value_proj(maxpool_s(e))
    out   = out_proj([self, alpha * xtask])                           C channels

with ``alpha`` a per-channel weight initialised to 0, so training starts from self-attention alone.

The "channel" attention variant (the paper's Fig. 5(b) ablation, designed here) uses the same Q, K, V maps but
correlates channels instead of positions: each target channel's spatial map (a vector over the N tokens) is
compared with every source channel's map, A = softmax_over_source_channels(Q K^T / sqrt(N)) is C x C, and the
output channel c is the A-weighted mix of the source value channels, A V, reshaped to (C, h, w) and upsampled.
"both" concatenates the spatial and channel outputs (2C channels, each with its own alpha).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlda.models.checkpointing import run_segment

ATTENTION_TOKEN_STRIDE = 8
_ATTENTION_BRANCHES = {"spatial": ("spatial",), "channel": ("channel",), "both": ("spatial", "channel"), "none": ()}
ATTENTION_KINDS = tuple(_ATTENTION_BRANCHES)
FUSIONS = ("add", "prod", "concat")


def attention_downscale(stage_stride: int) -> int:
    """xTAM pooling factor at a stage of the given stride: tokens sit at stride max(stage_stride, 8).

    Strides 16, 8, 4, 2, 1 give 1, 1, 2, 4, 8 (the official per-stage factors).
    """
    return max(1, ATTENTION_TOKEN_STRIDE // stage_stride)


def explicit_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """softmax(Q K^T / sqrt(d)) V with the (.., Lq, Lk) matrix materialised. (.., Lq, d), (.., Lk, d) -> (.., Lq, d)."""
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    return torch.softmax(scores, dim=-1) @ value


def attention(query: Tensor, key: Tensor, value: Tensor, use_sdpa: bool = True) -> Tensor:
    """Single-head softmax(Q K^T / sqrt(d)) V: (B, Lq, d), (B, Lk, d), (B, Lk, d) -> (B, Lq, d).

    ``use_sdpa`` routes through ``scaled_dot_product_attention`` (fused kernels that do not keep the Lq x Lk
    matrix where the device supports them); otherwise the explicit form. Inputs go to SDPA contiguous: with a
    non-unit stride on the last dimension the CPU dispatcher silently falls back to the math kernel, which does
    materialise the matrix.
    """
    if use_sdpa:
        q, k, v = (t[:, None].contiguous() for t in (query, key, value))
        return F.scaled_dot_product_attention(q, k, v)[:, 0]
    return explicit_attention(query, key, value)


def conv1x1_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv without bias + BN + ReLU: (B, in, H, W) -> (B, out, H, W)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class SelfAttentionGate(nn.Module):
    """PAD-Net self-attention F_f(x) * sigmoid(F_m(x)), 3x3 convs without bias: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.feature_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.mask_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_conv(x) * torch.sigmoid(self.mask_conv(x))


def _check_pair(target: Tensor, source: Tensor, downscale: int) -> None:
    if target.shape != source.shape or target.dim() != 4:
        raise ValueError(
            f"xTAM needs target and source features of one (B, C, H, W) shape, got {tuple(target.shape)} and "
            f"{tuple(source.shape)}."
        )
    height, width = target.shape[-2:]
    if height % downscale or width % downscale:
        raise ValueError(
            f"xTAM feature size {height}x{width} is not divisible by its downscale {downscale}; choose an input "
            f"size whose features at this stage divide by {downscale}."
        )


class XTAM(nn.Module):
    """Directional cross-task attention source -> target: (B, C, H, W), (B, C, H, W) -> (B, C, H, W).

    H and W must be divisible by ``downscale``; attention runs on (H/downscale)*(W/downscale) tokens.
    ``attention``: "spatial" (paper), "channel", "both" or "none" (self-attention only). ``use_sdpa`` selects the
    fused attention kernel (default) or the explicit softmax form (reference / benchmark).
    """

    def __init__(
        self,
        channels: int,
        downscale: int,
        self_attention: bool = True,
        attention: str = "spatial",
        use_alpha: bool = True,
        use_sdpa: bool = True,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention '{attention}' is unknown; choose one of {', '.join(ATTENTION_KINDS)}.")
        if not self_attention and attention == "none":
            raise ValueError("xTAM needs at least one branch: enable self_attention or choose an attention kind.")
        if channels % 2:
            raise ValueError(f"xTAM channels must be even (the self-attention branch has C/2), got {channels}.")
        if downscale < 1:
            raise ValueError(f"xTAM downscale must be >= 1, got {downscale}.")
        self.downscale = downscale
        self.attention_kinds = _ATTENTION_BRANCHES[attention]
        self.use_sdpa = use_sdpa
        self.extract = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.self_attention = SelfAttentionGate(channels, channels // 2) if self_attention else None
        attention_channels = channels * len(self.attention_kinds)
        if self.attention_kinds:
            self.query_proj = conv1x1_bn_relu(channels, channels)
            self.key_proj = conv1x1_bn_relu(channels, channels)
            self.value_proj = conv1x1_bn_relu(channels, channels)
        if self.attention_kinds and use_alpha:
            self.alpha = nn.Parameter(torch.zeros(1, attention_channels, 1, 1))
        else:
            self.register_parameter("alpha", None)
        branch_channels = (channels // 2 if self_attention else 0) + attention_channels
        self.out_proj = conv1x1_bn_relu(branch_channels, channels)

    def correlation_attention(self, target_feat: Tensor, extracted: Tensor) -> Tensor:
        """Correlation-guided branch: (B, C, H, W) target, (B, C, H, W) extracted source -> (B, A, H, W).

        A = C per attention kind; before alpha.
        """
        ds = self.downscale
        query = self.query_proj(target_feat[:, :, ::ds, ::ds] if ds > 1 else target_feat)
        pooled = F.max_pool2d(extracted, ds) if ds > 1 else extracted
        key, value = self.key_proj(pooled), self.value_proj(pooled)
        batch, channels, height, width = query.shape
        q, k, v = (t.flatten(2) for t in (query, key, value))  # (B, C, N)
        outputs = []
        for kind in self.attention_kinds:
            if kind == "spatial":
                mixed = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.use_sdpa)
                outputs.append(mixed.transpose(1, 2))
            else:
                outputs.append(attention(q, k, v, self.use_sdpa))
        out = torch.cat(outputs, dim=1).reshape(batch, -1, height, width)
        return F.interpolate(out, scale_factor=ds, mode="nearest") if ds > 1 else out

    def forward(self, target_feat: Tensor, source_feat: Tensor) -> Tensor:
        """Directional features source -> target: (B, C, H, W), (B, C, H, W) -> (B, C, H, W)."""
        _check_pair(target_feat, source_feat, self.downscale)
        extracted = self.extract(source_feat)
        branches = []
        if self.self_attention is not None:
            branches.append(self.self_attention(extracted))
        if self.attention_kinds:
            correlated = self.correlation_attention(target_feat, extracted)
            branches.append(correlated * self.alpha if self.alpha is not None else correlated)
        return self.out_proj(torch.cat(branches, dim=1))


def _sorted_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    ordered = tuple(sorted(tasks))
    if len(set(ordered)) != len(ordered):
        raise ValueError(f"tasks must be unique, got {list(tasks)}.")
    if len(ordered) < 2:
        raise ValueError(f"an exchange block needs at least 2 tasks, got {list(tasks)}.")
    return ordered


def _check_features(tasks: tuple[str, ...], features: Mapping[str, Tensor]) -> None:
    if set(features) != set(tasks):
        raise ValueError(f"exchange block built for tasks {list(tasks)} got features of {sorted(features)}.")


class MTEB(nn.Module):
    """Multi-task exchange block: dict[task, (B, C, H, W)] -> dict[task, (B, C, H, W)].

    One :class:`XTAM` per ordered pair (``pairs["<source>_to_<target>"]``). For each target the directional
    features are concatenated in sorted source order and projected by ``fuse[target]`` (1x1 conv + BN + ReLU),
    then combined with the target features: "add" f + fuse(..), "prod" f * fuse(..), or "concat" fuse([f, ..]).
    ``checkpoint_parts``: recompute each xTAM's and each fuse projection's activations in the backward pass, one
    part at a time (recomputing the whole block at once would hold every pair's activations together).
    """

    checkpoint_parts = False

    def __init__(
        self,
        tasks: Sequence[str],
        channels: int,
        downscale: int,
        fusion: str = "add",
        self_attention: bool = True,
        attention: str = "spatial",
        use_alpha: bool = True,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion '{fusion}' is unknown; choose one of {', '.join(FUSIONS)}.")
        self.tasks = _sorted_tasks(tasks)
        self.fusion = fusion
        self.downscale = downscale
        self.pairs = nn.ModuleDict(
            {
                f"{source}_to_{target}": XTAM(channels, downscale, self_attention, attention, use_alpha)
                for target in self.tasks
                for source in self.tasks
                if source != target
            }
        )
        fuse_inputs = len(self.tasks) - (0 if fusion == "concat" else 1)
        self.fuse = nn.ModuleDict({task: conv1x1_bn_relu(fuse_inputs * channels, channels) for task in self.tasks})

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        _check_features(self.tasks, features)
        parts = self.checkpoint_parts
        refined = {}
        for target in self.tasks:
            directional = [
                run_segment(self.pairs[f"{source}_to_{target}"], features[target], features[source], checkpointed=parts)
                for source in self.tasks
                if source != target
            ]
            base = features[target]
            fuse = self.fuse[target]
            if self.fusion == "concat":
                refined[target] = run_segment(fuse, torch.cat([base] + directional, dim=1), checkpointed=parts)
            elif self.fusion == "prod":
                refined[target] = base * run_segment(fuse, torch.cat(directional, dim=1), checkpointed=parts)
            else:
                refined[target] = base + run_segment(fuse, torch.cat(directional, dim=1), checkpointed=parts)
        return refined


class PadNetBlock(nn.Module):
    """PAD-Net multi-modal distillation: f_i + sum_{j != i} SA_{j->i}(f_j), full-C self-attention gates.

    dict[task, (B, C, H, W)] -> dict[task, (B, C, H, W)]; gates in ``pairs["<source>_to_<target>"]``.
    ``downscale`` is 1: no pooling, any feature size works. ``checkpoint_parts``: recompute each gate's activations
    in the backward pass, one gate at a time.
    """

    checkpoint_parts = False

    def __init__(self, tasks: Sequence[str], channels: int) -> None:
        super().__init__()
        self.tasks = _sorted_tasks(tasks)
        self.downscale = 1
        self.pairs = nn.ModuleDict(
            {
                f"{source}_to_{target}": SelfAttentionGate(channels, channels)
                for target in self.tasks
                for source in self.tasks
                if source != target
            }
        )

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        _check_features(self.tasks, features)
        refined = {}
        for target in self.tasks:
            messages = [
                run_segment(self.pairs[f"{source}_to_{target}"], features[source], checkpointed=self.checkpoint_parts)
                for source in self.tasks
                if source != target
            ]
            refined[target] = features[target] + torch.stack(messages).sum(dim=0)
        return refined


class GatedBlock(nn.Module):
    """An exchange block entered through a per-task, per-channel gate initialised to 0 (ReZero, Bachlechner et al.
    2021): dict[task, (B, C, H, W)] -> f + gate[task] * (block(f)[task] - f), so the block starts as the identity
    and a block inserted into a pretrained decoder does not perturb it at the first step."""

    def __init__(self, block: nn.Module, channels: int) -> None:
        super().__init__()
        self.block = block
        self.tasks = block.tasks
        self.downscale = block.downscale
        self.gate = nn.ParameterDict({task: nn.Parameter(torch.zeros(1, channels, 1, 1)) for task in self.tasks})

    @property
    def checkpoint_parts(self) -> bool:
        """Whether the wrapped block checkpoints its parts (see :class:`MTEB`)."""
        return self.block.checkpoint_parts

    @checkpoint_parts.setter
    def checkpoint_parts(self, value: bool) -> None:
        self.block.checkpoint_parts = value

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        refined = self.block(features)
        return {task: features[task] + self.gate[task] * (refined[task] - features[task]) for task in self.tasks}
