"""Edge metrics: the official DenseMTL two-class mean F1, the edge-class F1 with a matching tolerance, ODS-F."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlda.metrics.base import StreamingMetric, full_mask
from mtlda.resize import resize_to


class EdgesMetric(StreamingMetric):
    """Edge metrics (in %) over the valid pixels of the split.

    * ``mean_f1``: the paper's E column (official DenseMTL metric): the mean over the two classes (edge,
      non-edge) of F1 = 2 TP / (2 TP + FP + FN), from the 2x2 confusion matrix of the argmax prediction
      (probability >= 0.5), pixel-exact.
    * ``f1_edge``, ``precision``, ``recall``: the edge class at threshold 0.5 with a matching tolerance: a
      predicted edge pixel is correct if a GT edge lies within ``tolerance`` pixels (Chebyshev distance, max-pool
      dilation); a GT edge pixel is recalled if a predicted edge lies within the tolerance.
    * ``ods_f``: the best edge-class F (same tolerance) over ``num_thresholds`` fixed thresholds k / (n + 1)
      (ODS). Tolerance matching approximates the BSDS benchmark, which matches edge pixels one-to-one.
    """

    def __init__(self, tolerance: int = 1, num_thresholds: int = 99) -> None:
        if tolerance < 0:
            raise ValueError(f"edge tolerance must be >= 0 pixels, got {tolerance}")
        if num_thresholds < 1 or (num_thresholds + 1) % 2:
            raise ValueError(f"num_thresholds must be odd (so that 0.5 is one of them), got {num_thresholds}")
        self.tolerance = tolerance
        self.num_thresholds = num_thresholds
        super().__init__()

    @property
    def thresholds(self) -> Tensor:
        n = self.num_thresholds
        return torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)

    def _new_state(self) -> dict[str, Tensor]:
        # counts rows: predicted edges, predicted edges near a GT edge, GT edges near a prediction (per threshold);
        # confusion: pixel-exact 2x2 counts at 0.5 (rows GT non-edge/edge, columns predicted non-edge/edge).
        return {
            "counts": torch.zeros(3, self.num_thresholds, dtype=torch.int64),
            "gt_edges": torch.zeros((), dtype=torch.int64),
            "confusion": torch.zeros(2, 2, dtype=torch.int64),
        }

    def _dilate(self, x: Tensor) -> Tensor:
        if self.tolerance == 0:
            return x
        k = 2 * self.tolerance + 1
        return F.max_pool2d(x, kernel_size=k, stride=1, padding=self.tolerance)

    def _count_at_or_above(self, values: Tensor) -> Tensor:
        """(T,) number of values >= each threshold."""
        levels = torch.bucketize(values, self.thresholds.to(values.device), right=True)  # thresholds <= value
        hist = torch.bincount(levels, minlength=self.num_thresholds + 1)
        return hist.flip(0).cumsum(0).flip(0)[1:]

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """pred (B, 1, h, w) edge probabilities in [0, 1]; target (B, 1, H, W) in {0, 1}; mask (B, 1, H, W)."""
        if pred.ndim != 4 or pred.shape[1] != 1:
            raise ValueError(f"edge prediction must have shape (B, 1, h, w), got {tuple(pred.shape)}")
        pred = resize_to(pred, target.shape[-2:]).double()
        valid = full_mask(target, mask)
        gt_edge = (target > 0.5) & valid
        prob = torch.where(valid, pred, torch.full_like(pred, -1.0))
        near_gt = self._dilate(gt_edge.double()) > 0
        # The dilation of {prob >= t} is {max-pooled prob >= t}, so one pooling serves every threshold.
        near_pred = self._dilate(prob)
        self._follow(pred.device)
        self._state["counts"][0] += self._count_at_or_above(prob[valid])
        self._state["counts"][1] += self._count_at_or_above(prob[valid & near_gt])
        self._state["counts"][2] += self._count_at_or_above(near_pred[gt_edge])
        self._state["gt_edges"] += gt_edge.sum()
        predicted = (pred >= 0.5)[valid].long()
        labelled = gt_edge[valid].long()
        self._state["confusion"] += torch.bincount(2 * labelled + predicted, minlength=4).reshape(2, 2)

    def f_measure_curve(self) -> tuple[Tensor, Tensor, Tensor]:
        """(precision, recall, F) at every threshold, float64 in [0, 1] (0 where undefined)."""
        predicted, correct, recalled = self._state["counts"].double()
        gt_edges = self._state["gt_edges"].double()
        precision = torch.where(predicted > 0, correct / predicted.clamp_min(1), 0.0)
        recall = torch.where(gt_edges > 0, recalled / gt_edges.clamp_min(1), 0.0)
        denom = precision + recall
        f = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), 0.0)
        return precision, recall, f

    def mean_two_class_f1(self) -> float:
        """Mean over non-edge and edge of 2 TP / (2 TP + FP + FN) at the argmax, in [0, 1] (NaN when empty)."""
        conf = self._state["confusion"].double()
        tp = conf.diag()
        denom = conf.sum(0) + conf.sum(1)
        f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))
        return float(f1.nanmean()) if torch.isfinite(f1).any() else float("nan")

    def compute(self) -> dict[str, float]:
        precision, recall, f = self.f_measure_curve()
        half = self.num_thresholds // 2
        best = int(f.argmax())
        return {
            "mean_f1": 100 * self.mean_two_class_f1(),
            "f1_edge": 100 * f[half].item(),
            "precision": 100 * precision[half].item(),
            "recall": 100 * recall[half].item(),
            "ods_f": 100 * f[best].item(),
            "ods_threshold": self.thresholds[best].item(),
        }

    def protocol_description(self) -> str:
        return (
            "edges: mean_f1 = mean over edge/non-edge of the pixel-exact F1 at the argmax (official DenseMTL); "
            f"f1_edge at 0.5 and ODS-F over {self.num_thresholds} thresholds with a matching tolerance of "
            f"{self.tolerance} px (max-pool dilation, approximates BSDS bipartite matching)"
        )
