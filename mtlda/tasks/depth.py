"""Supervised depth: one channel regressing the scaled inverse depth, berHu on it, metric depth decoded exactly."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlda.constants import DEPTH_INV_SCALE_DEFAULT
from mtlda.data.batch import Batch
from mtlda.data.targets import SCALAR_MAP
from mtlda.distributed import global_max, global_min
from mtlda.errors import UserInputError
from mtlda.losses.supervised import berhu_loss
from mtlda.metrics import DEPTH_METRIC_NAMES, DepthMetric
from mtlda.resize import resize_to
from mtlda.schema import DepthProtocol
from mtlda.tasks.base import Task
from mtlda.tasks.registry import register_task
from mtlda.visualise import colourise_depth_pair, colourise_depth_robust

# Smallest scaled inverse depth y accepted when decoding d = s / y - c (keeps d finite for y <= 0).
MIN_INVERSE_DEPTH = 1e-6
DEPTH_HIGHER_IS_BETTER = {name: name.startswith("delta") for name in DEPTH_METRIC_NAMES}
DEPTH_COLUMNS = (("abs_rel", "AbsRel", False), ("rmse", "RMSE m", False), ("delta1", "d<1.25 %", True))


class DepthMapTask(Task):
    """What the tasks that predict depth share: the depth target and mask, the depth metric under ``protocol``,
    log-depth pictures. Subclasses set ``protocol`` (a :class:`DepthProtocol`) and decode to metres."""

    columns = DEPTH_COLUMNS
    out_channels = 1
    protocol: DepthProtocol

    def mask(self, batch: Batch) -> Tensor:
        """(B, 1, H, W) bool: the depth mask and a positive ground truth."""
        return super().mask(batch) & (self.target(batch) > 0)

    def new_metric(self) -> DepthMetric:
        return DepthMetric(self.protocol)

    def visualise(self, decoded: Tensor) -> Tensor:
        """Log depth over each image's 2nd-98th percentile range (near is bright; invariant to the depth's scale)."""
        return colourise_depth_robust(decoded)

    def visualise_target(self, batch: Batch) -> Tensor:
        return colourise_depth_robust(self.target(batch), self.mask(batch))


@register_task
class DepthTask(DepthMapTask):
    """Depth: the head regresses y = s / (d + c) (s = ``inv_scale``, c = ``inv_offset`` metres); berHu on y;
    decoded d = s / y - c metres. The official head's encoding is s = 655.36, c = 0.01."""

    name = "depth"
    code = "D"
    target_kind = SCALAR_MAP
    main_metric = "rmse"

    def __init__(self, inv_scale: float = DEPTH_INV_SCALE_DEFAULT, protocol: DepthProtocol | None = None,
                 inv_offset: float = 0.0) -> None:
        if inv_scale <= 0:
            raise UserInputError(f"tasks.depth_inv_scale must be positive, got {inv_scale}")
        if inv_offset < 0:
            raise UserInputError(f"tasks.depth_inv_offset must be >= 0 metres, got {inv_offset}")
        self.inv_scale = float(inv_scale)
        self.inv_offset = float(inv_offset)
        self.protocol = protocol if protocol is not None else DepthProtocol()
        self.higher_is_better = dict(DEPTH_HIGHER_IS_BETTER)

    @classmethod
    def from_config(cls, cfg: Any, info: Any) -> "DepthTask":
        t = cfg.tasks
        return cls(t.depth_inv_scale, t.depth_protocol, t.depth_inv_offset)

    def encode(self, depth: Tensor, valid: Tensor) -> Tensor:
        """Scaled inverse depth y = s / (d + c) (B, 1, H, W) of metric depth (B, 1, H, W); 0 outside ``valid``."""
        safe = torch.where(valid, depth, torch.ones_like(depth)) + self.inv_offset
        return torch.where(valid, self.inv_scale / safe, 0.0)

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        self.check_raw(pred_raw)
        depth = self.target(batch)
        valid = self.mask(batch)
        return berhu_loss(resize_to(pred_raw, depth.shape[-2:]), self.encode(depth, valid), valid)

    def decoding_rule(self) -> str:
        return f"scaled inverse depth y: metres = {self.inv_scale} / max(y, 1e-6) - {self.inv_offset}"

    def decode(self, pred_raw: Tensor) -> Tensor:
        """(B, 1, h, w) metres d = s / max(y, 1e-6) - c."""
        self.check_raw(pred_raw)
        return self.inv_scale / pred_raw.clamp_min(MIN_INVERSE_DEPTH) - self.inv_offset

    def visualise_pair(self, decoded: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Prediction and target in the target's colour range."""
        return colourise_depth_pair(decoded, self.target(batch), self.mask(batch))

    def discriminator_context(self, source: Batch) -> tuple[Tensor, Tensor]:
        """(min, max) of the source batch's ground truth in the head's units y (0-dim tensors; under torchrun the
        global batch's)."""
        valid = self.mask(source)
        encoded = self.encode(self.target(source), valid)
        inf = torch.tensor(float("inf"), dtype=encoded.dtype, device=encoded.device)
        low = global_min(torch.where(valid, encoded, inf).min())
        high = global_max(torch.where(valid, encoded, -inf).max())
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            raise UserInputError("the source batch has no valid depth pixel: cannot normalise the depth maps")
        if not bool(high > low):
            raise UserInputError("the source batch's valid depths are all equal: the depth normalisation is empty")
        return low, high

    def discriminator_input(self, pred_raw: Tensor, context: tuple[Tensor, Tensor]) -> Tensor:
        """(y - min) / (max - min) (B, 1, H, W) with the source range, not clipped."""
        low, high = context
        return (pred_raw - low) / (high - low)
