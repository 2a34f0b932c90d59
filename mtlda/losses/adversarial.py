"""Output-level adversarial domain adaptation (paper appendix B.3, Eq. 7-10; ADVENT, DADA).

Inputs of the discriminators are defined by each task (``Task.discriminator_input``): the segmentation entropy map
(:func:`entropy_map`, Eq. 10), the depth head's scaled inverse depth normalised by the source batch's ground-truth
range (for source and target alike, not clipped, no ReLU unlike the official code), unit normals, edge
probabilities.

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
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlda.models.discriminator import discriminator_key

SOURCE_LABEL = 1.0
TARGET_LABEL = 0.0
FINAL_SCALE = 0

PredKey = tuple[str, int]


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
