"""Supervised task losses and the paper's multi-scale multi-task objective (Eq. 6 of the supplementary).

Every loss averages over its valid pixels only, is exactly invariant to the values (prediction and target) at
masked or ignored pixels, and returns a zero that keeps the autograd graph when no pixel is valid. Under torchrun
the means are over the valid pixels of the *global* batch (counts and the berHu threshold are reduced over ranks,
:mod:`mtlda.distributed`), so the averaged gradients equal those of one process on the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlda.constants import EDGE_POS_WEIGHT, IGNORE_INDEX
from mtlda.distributed import global_denominator, global_max
from mtlda.geometry import unit_vectors

# berHu threshold c as a fraction of the largest absolute error over the valid pixels of the batch.
BERHU_THRESHOLD_FRACTION = 0.2


def _masked_mean(per_pixel: Tensor, valid: Tensor) -> Tensor:
    """Mean of per_pixel over valid (same shape), over the global batch; 0 (graph kept) when nothing is valid."""
    total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
    denominator = global_denominator(valid.sum())
    return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator)).to(total.dtype)


def _check_same_shape(pred: Tensor, target: Tensor, mask: Tensor, channels: int) -> None:
    if pred.ndim != 4 or pred.shape[1] != channels:
        raise ValueError(f"prediction must have shape (B, {channels}, H, W), got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} differs from prediction shape {tuple(pred.shape)}")
    if mask.shape != (pred.shape[0], 1, *pred.shape[2:]):
        raise ValueError(f"mask must have shape (B, 1, H, W) of the prediction, got {tuple(mask.shape)}")


def cross_entropy_loss(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy of logits (B, C, H, W) against labels (B, H, W) int64 over non-ignored pixels."""
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"need logits (B, C, H, W) and labels (B, H, W), got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    per_pixel = F.cross_entropy(logits, safe_labels, reduction="none")
    return _masked_mean(per_pixel, valid)


def berhu_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Reverse Huber loss of pred (B, 1, H, W) against target (B, 1, H, W) over mask (B, 1, H, W) bool.

    e = |pred - target|; c = 0.2 * max e over the valid pixels of the batch (no gradient through c);
    per pixel e if e <= c, else (e^2 + c^2) / (2c); mean over valid pixels.
    """
    _check_same_shape(pred, target, mask, 1)
    error = torch.where(mask, (pred - target).abs(), torch.zeros_like(pred))
    c = BERHU_THRESHOLD_FRACTION * global_max(error.max())
    c_safe = c.clamp_min(torch.finfo(error.dtype).tiny)
    quadratic = (error**2 + c**2) / (2 * c_safe)
    return _masked_mean(torch.where(error <= c, error, quadratic), mask)


def normals_cosine_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean of 1 - cos(pred, target) over mask (B, 1, H, W) bool; pred (B, 3, H, W) any length, target (B, 3, H, W).

    The target must hold unit normals where the mask is valid (the Batch convention): it is used as it is, not
    normalised again. The prediction is normalised with :func:`mtlda.geometry.unit_vectors`.
    """
    _check_same_shape(pred, target, mask, 3)
    clean_pred = torch.where(mask, pred, torch.ones_like(pred))
    clean_target = torch.where(mask, target, torch.zeros_like(target))
    cosine = (unit_vectors(clean_pred, dim=1) * clean_target).sum(dim=1, keepdim=True)
    return _masked_mean(1 - cosine, mask)


def weighted_edge_bce(logits: Tensor, target: Tensor, mask: Tensor, pos_weight: float = EDGE_POS_WEIGHT) -> Tensor:
    """Class-weighted binary cross-entropy of edge logits (B, 1, H, W) against target (B, 1, H, W) in {0, 1}.

    Edge pixels weigh ``pos_weight`` (0.95), background pixels 1 - pos_weight (0.05); the weighted sum over the
    valid pixels is divided by the sum of their weights (a weighted mean, as PyTorch's class-weighted losses do).
    """
    _check_same_shape(logits, target, mask, 1)
    clean_logits = torch.where(mask, logits, torch.zeros_like(logits))
    clean_target = torch.where(mask, target, torch.zeros_like(target))
    per_pixel = F.binary_cross_entropy_with_logits(clean_logits, clean_target, reduction="none")
    weight = torch.where(mask, pos_weight * clean_target + (1 - pos_weight) * (1 - clean_target), 0.0)
    denominator = global_denominator(weight.sum()).clamp_min(torch.finfo(weight.dtype).tiny)
    return (per_pixel * weight).sum() / denominator.to(weight.dtype)


def multiscale_objective(
    losses: dict[tuple[str, int], Tensor], weights: dict[str, float], final_scale: int = 0
) -> tuple[Tensor, dict[str, Tensor]]:
    """The paper's Eq. 6: sum over tasks t of w_t * (L_{t, final} + mean over intermediate scales s of L_{t, s}).

    losses maps (task, scale) to a scalar loss; the final scale is ``final_scale``, every other scale of a task
    is an intermediate one (a task with only the final scale gets w_t * L_{t, final}). Returns (total, per_task)
    where per_task[t] is the weighted term of task t, so total == sum(per_task.values()). Tasks are sorted.
    """
    scales_of: dict[str, list[int]] = {}
    for task, scale in losses:
        scales_of.setdefault(task, []).append(scale)
    if not scales_of:
        raise ValueError("multiscale_objective got no losses")
    per_task: dict[str, Tensor] = {}
    for task in sorted(scales_of):
        if task not in weights:
            raise ValueError(f"no loss weight for task {task!r}; weights are given for {sorted(weights)}")
        if final_scale not in scales_of[task]:
            raise ValueError(
                f"task {task!r} has losses at scales {sorted(scales_of[task])} "
                f"but none at the final scale {final_scale}"
            )
        term = losses[(task, final_scale)]
        intermediate = [losses[(task, s)] for s in sorted(scales_of[task]) if s != final_scale]
        if intermediate:
            term = term + torch.stack(intermediate).mean()
        per_task[task] = weights[task] * term
    total = torch.stack(list(per_task.values())).sum()
    return total, per_task
