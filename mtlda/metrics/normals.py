"""Surface-normal angular errors per valid pixel."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlda.geometry import unit_vectors
from mtlda.metrics.base import StreamingMetric, full_mask
from mtlda.resize import resize_to

# Angular-error histogram: 0.01 degree bins over [0, 180].
ANGLE_BIN_DEG = 0.01
ANGLE_BINS = 18000
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


def angular_error(pred: Tensor, target: Tensor) -> Tensor:
    """(B, H, W) float64 degrees between (B, 3, H, W) vector fields (both normalised first). A zero prediction has
    no direction and scores 90 degrees (atan2 would give it 0: a perfect score)."""
    p = unit_vectors(pred.double())
    g = unit_vectors(target.double())
    cross = torch.linalg.cross(p, g, dim=1).norm(dim=1)
    angles = torch.rad2deg(torch.atan2(cross, (p * g).sum(dim=1)))
    return torch.where(p.square().sum(dim=1) > 0, angles, torch.full_like(angles, 90.0))


class NormalsMetric(StreamingMetric):
    """Angular error (degrees) between unit normals per valid pixel: mean, median, % under 11.25/22.5/30.

    The error is atan2(|p x g|, p . g) with both vectors normalised (90 degrees where the prediction is zero).
    The mean and the threshold fractions are exact; the median over all pixels of the split is read from a
    histogram of 0.01-degree bins (the centre of the bin that holds the lower median), so it is exact to 0.005
    degrees and reducible across ranks. Valid pixels: the mask and a non-zero target.
    """

    def _new_state(self) -> dict[str, Tensor]:
        return {
            "histogram": torch.zeros(ANGLE_BINS, dtype=torch.int64),
            "sum": torch.zeros((), dtype=torch.float64),
            "count": torch.zeros((), dtype=torch.int64),
            "under": torch.zeros(len(ANGLE_THRESHOLDS), dtype=torch.int64),
        }

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """pred (B, 3, h, w) normals (normalised here); target (B, 3, H, W) unit normals; mask (B, 1, H, W)."""
        if pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"normals prediction must have shape (B, 3, h, w), got {tuple(pred.shape)}")
        pred = resize_to(pred, target.shape[-2:])
        valid = (full_mask(target, mask) & (target.norm(dim=1, keepdim=True) > 0))[:, 0]
        angles = angular_error(pred, target)[valid]
        self._follow(pred.device)
        bins = (angles / ANGLE_BIN_DEG).long().clamp(0, ANGLE_BINS - 1)
        self._state["histogram"] += torch.bincount(bins, minlength=ANGLE_BINS)
        self._state["sum"] += angles.sum()
        self._state["count"] += angles.numel()
        self._state["under"] += torch.stack([(angles < t).sum() for t in ANGLE_THRESHOLDS])

    def compute(self) -> dict[str, float]:
        count = self._state["count"].item()
        names = ["mean", "median"] + [f"within_{t:g}" for t in ANGLE_THRESHOLDS]
        if count == 0:
            return {name: float("nan") for name in names}
        cumulative = self._state["histogram"].cumsum(0)
        median_bin = torch.searchsorted(cumulative, torch.tensor((count + 1) // 2, device=cumulative.device)).item()
        values = [self._state["sum"].item() / count, (median_bin + 0.5) * ANGLE_BIN_DEG]
        values += [100 * u / count for u in self._state["under"].tolist()]
        return dict(zip(names, values))

    def protocol_description(self) -> str:
        return (
            "normals: angular error in degrees per valid pixel over the split, median from 0.01-degree bins, "
            f"% under {', '.join(f'{t:g}' for t in ANGLE_THRESHOLDS)} degrees"
        )
