"""Output-level adversarial domain adaptation (paper appendix B.3, Eq. 7-10; ADVENT, DADA).

Inputs of the discriminators, one function per task:

* semseg: ADVENT's weighted self-information map -p log p / log C of the softmax (Eq. 10), C channels;
* depth: the raw depth head output y = s / d (scaled inverse depth, what the head regresses), normalised with
  the min and max of the *source* batch's ground truth in the same units, for source and target predictions
  alike. Inverse depth is what DADA aligns; normalising the head's own quantity needs no division by a
  prediction that may be near zero or negative early in training. Values are not clipped (target predictions
  may fall outside [0, 1]) and, unlike the official code, not passed through a ReLU, so the discriminator can
  see negative inverse depths;
* normals: the L2-normalised prediction;
* edges: the sigmoid edge probability.

Labels follow the paper: source = 1, target = 0 (the official code swaps them, which is equivalent).

Weighting (paper Eq. 9): adversarial terms are summed over tasks; the final output (scale 0) counts fully and
the intermediate scales are averaged, like the supervised terms of Eq. 6. With the default scales [0, 1] this is a
plain sum over discriminators. The official code instead averages over all discriminators, which divides the
effective lambda_adv by their number. The discriminator loss is a plain sum of each discriminator's Eq. 7 loss:
discriminators share no parameters, so each one receives exactly its own Eq. 7 gradient.

Predictions and inputs are keyed by (task_name, scale), like the network's predictions; discriminators are
looked up by :func:`mtlda.models.discriminator.discriminator_key`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlda.models.discriminator import discriminator_key

SOURCE_LABEL = 1.0
TARGET_LABEL = 0.0
FINAL_SCALE = 0

PredKey = tuple[str, int]
Number = float | Tensor


def entropy_map(logits: Tensor) -> Tensor:
    """Weighted self-information -p log p / log C per class, in [0, 1 / e / log C]; sums to the normalised
    entropy in [0, 1] over channels.

    logits (B, C, H, W), C >= 2 -> (B, C, H, W) float32, from log_softmax: finite for any finite logits.
    """
    if logits.ndim != 4 or logits.shape[1] < 2:
        raise ValueError(f"entropy_map expects (B, C, H, W) logits with C >= 2 classes, got {tuple(logits.shape)}")
    # Clamped so that a class whose probability underflows to 0 contributes 0 * finite, never 0 * -inf.
    log_p = F.log_softmax(logits.float(), dim=1).clamp_min(torch.finfo(torch.float32).min)
    return -log_p.exp() * log_p / math.log(logits.shape[1])


def source_depth_range(target_depth: Tensor, mask: Tensor, inv_scale: float) -> tuple[Tensor, Tensor]:
    """Min and max of the source ground truth in the depth head's units y = inv_scale / d.

    target_depth (B, 1, H, W) metres, mask (B, 1, H, W) bool (pixels with depth <= 0 are also skipped)
    -> (min, max) 0-dim tensors, min = inv_scale / farthest depth, max = inv_scale / nearest depth.
    """
    if target_depth.ndim != 4 or target_depth.shape[1] != 1:
        raise ValueError(f"source_depth_range expects (B, 1, H, W) depth in metres, got {tuple(target_depth.shape)}")
    if mask.shape != target_depth.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"source_depth_range expects a bool mask shaped like the depth {tuple(target_depth.shape)}, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )
    if inv_scale <= 0:
        raise ValueError(f"inv_scale must be positive (tasks.depth.inv_scale), got {inv_scale}")
    valid = mask & (target_depth > 0)
    if not bool(valid.any()):
        raise ValueError("the source batch has no valid depth pixel: cannot compute the depth normalisation range")
    inverse = inv_scale / target_depth[valid]
    low, high = inverse.min(), inverse.max()
    if not bool(high > low):
        raise ValueError("the source batch's valid depths are all equal: the depth normalisation range is empty")
    return low, high


def normalise_depth(depth_pred: Tensor, source_min: Number, source_max: Number) -> Tensor:
    """(y - min) / (max - min) with the source range from :func:`source_depth_range`, not clipped.

    depth_pred (B, 1, H, W) raw head output y = s / d -> (B, 1, H, W).
    """
    if depth_pred.ndim != 4 or depth_pred.shape[1] != 1:
        raise ValueError(f"normalise_depth expects a (B, 1, H, W) depth prediction, got {tuple(depth_pred.shape)}")
    span = source_max - source_min
    if bool(torch.as_tensor(span).le(0).any()):
        raise ValueError(f"normalise_depth needs source_max > source_min, got {source_min} and {source_max}")
    return (depth_pred - source_min) / span


def unit_normals(pred: Tensor) -> Tensor:
    """Raw normals prediction (B, 3, H, W) -> unit vectors (B, 3, H, W) along the channel axis."""
    if pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"unit_normals expects a (B, 3, H, W) normals prediction, got {tuple(pred.shape)}")
    return F.normalize(pred, dim=1)


def discriminator_input(
    task_name: str,
    pred_raw: Tensor,
    source_range: tuple[Number, Number] | None = None,
    out_size: tuple[int, int] | None = None,
) -> Tensor:
    """The map a task's discriminator reads, from a raw head output (B, C, h, w).

    When ``out_size`` (H, W) is given the raw output is first upsampled to it (bilinear, align_corners=False).
    ``source_range`` (min, max) from :func:`source_depth_range` is required for depth.
    Returns semseg (B, C, H, W) entropy map; depth (B, 1, H, W) normalised; normals (B, 3, H, W) unit;
    edges (B, 1, H, W) probability.
    """
    if out_size is not None and tuple(pred_raw.shape[-2:]) != tuple(out_size):
        pred_raw = F.interpolate(pred_raw, size=tuple(out_size), mode="bilinear", align_corners=False)
    if task_name == "semseg":
        return entropy_map(pred_raw)
    if task_name == "depth":
        if source_range is None:
            raise ValueError("discriminator_input('depth', ...) needs source_range from source_depth_range()")
        return normalise_depth(pred_raw, *source_range)
    if task_name == "normals":
        return unit_normals(pred_raw)
    if task_name == "edges":
        return torch.sigmoid(pred_raw)
    raise ValueError(
        f"no discriminator input is defined for task {task_name!r}; choose one of: depth, edges, normals, semseg"
    )


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module``'s parameters do not require gradients (they get none); restored after."""
    params = list(module.parameters())
    previous = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(params, previous):
            p.requires_grad_(flag)


def adversarial_scale_weights(scales: set[int]) -> dict[int, float]:
    """Eq. 9 weights: the final scale 0 counts 1, each intermediate scale 1 / (number of intermediate scales)."""
    intermediate = [s for s in scales if s != FINAL_SCALE]
    return {s: 1.0 if s == FINAL_SCALE else 1.0 / len(intermediate) for s in scales}


def _domain_bce(discriminators: nn.ModuleDict, key: PredKey, x: Tensor, label: float) -> Tensor:
    name = discriminator_key(*key)
    if name not in discriminators:
        raise ValueError(
            f"no discriminator {name!r} for prediction {key}; built: {sorted(discriminators.keys())} "
            f"(build_discriminators with this task and scale)"
        )
    logits = discriminators[name](x)
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def adversarial_generator_loss(
    discriminators: nn.ModuleDict, target_inputs: dict[PredKey, Tensor], lambda_adv: float
) -> tuple[Tensor, dict[PredKey, Tensor]]:
    """Eq. 8-9: lambda_adv * sum_t [BCE(D(x_tgt), source) at scale 0 + mean over intermediate scales].

    ``target_inputs`` maps (task, scale) to :func:`discriminator_input` maps of target images. The
    discriminators are frozen during the call (they receive no gradient); gradients flow into the inputs.
    Returns (loss, unweighted detached BCE per key).
    """
    if not target_inputs:
        raise ValueError("adversarial_generator_loss needs at least one target input")
    weights = adversarial_scale_weights({scale for _, scale in target_inputs})
    per_key: dict[PredKey, Tensor] = {}
    terms = []
    with frozen(discriminators):
        for key in sorted(target_inputs):
            bce = _domain_bce(discriminators, key, target_inputs[key], SOURCE_LABEL)
            per_key[key] = bce.detach()
            terms.append(weights[key[1]] * bce)
    return lambda_adv * torch.stack(terms).sum(), per_key


def discriminator_loss(
    discriminators: nn.ModuleDict,
    source_inputs: dict[PredKey, Tensor],
    target_inputs: dict[PredKey, Tensor],
) -> tuple[Tensor, dict[PredKey, Tensor]]:
    """Eq. 7 summed over discriminators: BCE(D(x_src), 1) + BCE(D(x_tgt), 0) per (task, scale).

    Inputs are detached, so the network producing them gets no gradient. Returns (loss, detached loss per key).
    """
    if source_inputs.keys() != target_inputs.keys():
        raise ValueError(
            f"source and target inputs must cover the same (task, scale) keys, got {sorted(source_inputs)} "
            f"and {sorted(target_inputs)}"
        )
    if not source_inputs:
        raise ValueError("discriminator_loss needs at least one (task, scale) input")
    losses = {
        key: _domain_bce(discriminators, key, source_inputs[key].detach(), SOURCE_LABEL)
        + _domain_bce(discriminators, key, target_inputs[key].detach(), TARGET_LABEL)
        for key in sorted(source_inputs)
    }
    return torch.stack(list(losses.values())).sum(), {key: loss.detach() for key, loss in losses.items()}
