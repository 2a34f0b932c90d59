"""Depth metrics (AbsRel, SqRel, RMSE, RMSE-log, delta < 1.25^k) under a named protocol."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlda.geometry import median_scale
from mtlda.metrics.base import StreamingMetric, full_mask
from mtlda.resize import resize_to
from mtlda.schema import DepthProtocol

DEPTH_METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


def protocol_prediction(pred: Tensor, target: Tensor, mask: Tensor | None,
                        protocol: DepthProtocol) -> tuple[Tensor, Tensor, Tensor]:
    """The prediction as ``protocol`` scores it: resized to the target, median-scaled per image over the evaluated
    pixels (if the protocol says so) and clamped; the target with 1 outside them; the evaluated pixels.

    pred (B, 1, h, w) metres; target (B, 1, H, W) metres; mask (B, 1, H, W) bool or None -> float64 (B, 1, H, W)
    prediction, float64 (B, 1, H, W) target, bool (B, 1, H, W) evaluated pixels.
    """
    if pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(f"depth prediction must have shape (B, 1, h, w), got {tuple(pred.shape)}")
    pred = resize_to(pred, target.shape[-2:]).double()
    gt = target.double()
    valid = full_mask(target, mask) & (gt > protocol.min_depth) & (gt < protocol.max_depth)
    if protocol.median_scaling:
        pred = median_scale(pred, gt, valid)
    pred = pred.clamp(protocol.min_depth, protocol.max_depth)
    return pred, torch.where(valid, gt, torch.ones_like(gt)), valid


def checked_protocol(protocol: DepthProtocol | None) -> DepthProtocol:
    """``protocol`` (default: :class:`DepthProtocol`()) after checking 0 < min_depth < max_depth."""
    protocol = protocol if protocol is not None else DepthProtocol()
    if not 0 < protocol.min_depth < protocol.max_depth:
        raise ValueError(f"depth protocol needs 0 < min_depth < max_depth, got {protocol.min_depth}, "
                         f"{protocol.max_depth}")
    return protocol


class DepthMetric(StreamingMetric):
    """AbsRel, SqRel, RMSE (m), RMSE-log, delta < 1.25^k (%) under a :class:`DepthProtocol`.

    Evaluated pixels: mask and min_depth < GT < max_depth. With ``median_scaling`` the prediction is multiplied per
    image by median(GT) / median(prediction) over those pixels; then it is clamped into [min_depth, max_depth].
    Per-pixel averaging pools all evaluated pixels of the split (RMSE = sqrt of the pooled mean squared error);
    per-image averaging computes every metric per image and averages over images with at least one evaluated
    pixel; its RMSE (and RMSE-log) is the square root of the mean per-image squared error, as the official DenseMTL
    code computes the paper's RMSE (Monodepth2 averages per-image RMSEs instead, which is never larger).
    """

    def __init__(self, protocol: DepthProtocol | None = None) -> None:
        self.protocol = checked_protocol(protocol)
        super().__init__()

    def _new_state(self) -> dict[str, Tensor]:
        return {
            "sums": torch.zeros(len(DEPTH_METRIC_NAMES), dtype=torch.float64),
            "count": torch.zeros((), dtype=torch.float64),
        }

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """pred (B, 1, h, w) metres; target (B, 1, H, W) metres; mask (B, 1, H, W) bool."""
        p = self.protocol
        pred, gt_safe, valid = protocol_prediction(pred, target, mask, p)
        ratio = torch.maximum(pred / gt_safe, gt_safe / pred)
        per_pixel = torch.stack(
            [
                (pred - gt_safe).abs() / gt_safe,
                (pred - gt_safe) ** 2 / gt_safe,
                (pred - gt_safe) ** 2,
                (pred.log() - gt_safe.log()) ** 2,
                (ratio < 1.25).double(),
                (ratio < 1.25**2).double(),
                (ratio < 1.25**3).double(),
            ]
        )  # (7, B, 1, H, W)
        per_pixel = torch.where(valid[None], per_pixel, torch.zeros_like(per_pixel))
        self._follow(pred.device)
        if p.per_image:
            n = valid.flatten(1).sum(1).double()
            means = per_pixel.flatten(2).sum(2) / n.clamp_min(1)  # (7, B)
            used = n > 0
            self._state["sums"] += (means * used).sum(1)
            self._state["count"] += used.sum()
        else:
            self._state["sums"] += per_pixel.flatten(1).sum(1)
            self._state["count"] += valid.sum()

    def compute(self) -> dict[str, float]:
        count = self._state["count"].item()
        if count == 0:
            return {name: float("nan") for name in DEPTH_METRIC_NAMES}
        means = (self._state["sums"] / count).tolist()
        out = dict(zip(DEPTH_METRIC_NAMES, means))
        out["rmse"] = math.sqrt(out["rmse"])
        out["rmse_log"] = math.sqrt(out["rmse_log"])
        for k in ("delta1", "delta2", "delta3"):
            out[k] *= 100
        return out

    def protocol_description(self) -> str:
        p = self.protocol
        return (
            f"depth: GT in ({p.min_depth:g}, {p.max_depth:g}) m, prediction clamped to [{p.min_depth:g}, "
            f"{p.max_depth:g}], median scaling {'per image' if p.median_scaling else 'off'}, "
            f"{'per-image averaging (RMSE: root of the mean per-image MSE)' if p.per_image else 'per-pixel averaging'}"
        )


class DepthByClassMetric(StreamingMetric):
    """Depth errors split by the ground-truth semantic class of each pixel: where a depth model is wrong.

    The prediction is scaled and clamped exactly as :class:`DepthMetric` does it over the whole image (median
    scaling uses every evaluated pixel, not one class's), then per class the evaluated pixels are pooled over the
    split: share of the evaluated pixels (%), AbsRel, signed relative error ``mean((pred - gt) / gt)`` (> 0: too
    far) and RMSE (m). Pixels whose label is outside [0, num_classes) (e.g. 255) are left out. The protocol's
    ``per_image`` is not used: a class's pixels are pooled over the split.
    """

    def __init__(self, num_classes: int, protocol: DepthProtocol | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.protocol = checked_protocol(protocol)
        super().__init__()

    def _new_state(self) -> dict[str, Tensor]:
        # rows: pixel count, sum |rel|, sum rel, sum squared error
        return {"sums": torch.zeros(4, self.num_classes, dtype=torch.float64)}

    def update(self, pred: Tensor, target: Tensor, labels: Tensor, mask: Tensor | None = None) -> None:
        """pred (B, 1, h, w) metres; target (B, 1, H, W) metres; labels (B, H, W) int class ids at the target's
        size; mask (B, 1, H, W) bool."""
        if labels.shape != (target.shape[0], *target.shape[-2:]):
            raise ValueError(f"labels must have shape (B, H, W) = {(target.shape[0], *target.shape[-2:])}, "
                             f"got {tuple(labels.shape)}")
        pred, gt, valid = protocol_prediction(pred, target, mask, self.protocol)
        rel = ((pred - gt) / gt)[:, 0]
        keep = valid[:, 0] & (labels >= 0) & (labels < self.num_classes)
        ids = labels[keep].long()
        values = torch.stack([torch.ones_like(rel[keep]), rel[keep].abs(), rel[keep], ((pred - gt)[:, 0][keep]) ** 2])
        self._follow(pred.device)
        self._state["sums"].index_add_(1, ids, values)

    def compute(self) -> dict[str, float]:
        """AbsRel of all evaluated pixels pooled (``abs_rel``)."""
        count, abs_sum = self._state["sums"][0], self._state["sums"][1]
        total = count.sum().item()
        return {"abs_rel": abs_sum.sum().item() / total if total else float("nan")}

    def per_class(self) -> dict[int, dict[str, float]]:
        """class id -> {share (%), abs_rel, bias, rmse (m)} for every class with an evaluated pixel."""
        count, abs_sum, signed, squared = self._state["sums"].cpu()
        total = count.sum().item()
        return {c: {"share": 100 * count[c].item() / total, "abs_rel": (abs_sum[c] / count[c]).item(),
                    "bias": (signed[c] / count[c]).item(), "rmse": math.sqrt((squared[c] / count[c]).item())}
                for c in range(self.num_classes) if count[c] > 0}

    def protocol_description(self) -> str:
        p = self.protocol
        scaling = "per image (all its evaluated pixels)" if p.median_scaling else "off"
        return (f"depth: GT in ({p.min_depth:g}, {p.max_depth:g}) m, prediction clamped to [{p.min_depth:g}, "
                f"{p.max_depth:g}], median scaling {scaling}, errors pooled per ground-truth class over the split")
