"""One object per dense task: head size, loss, decoding, metric, direction of improvement and visualisation.

Scenarios and models iterate over ``build_tasks(...)`` and never hard-code task names. Raw head outputs are
(B, C, h, w) at any stride; losses upsample them (bilinear, ``align_corners=False``) to the target resolution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlda.constants import DEPTH_INV_SCALE_DEFAULT, TASK_CODES
from mtlda.data.batch import Batch
from mtlda.losses.photometric import disp_to_depth
from mtlda.losses.supervised import (
    berhu_loss,
    cross_entropy_loss,
    normals_cosine_loss,
    upsample_to,
    weighted_edge_bce,
)
from mtlda.metrics import DepthMetric, EdgesMetric, NormalsMetric, SegmentationMetric, StreamingMetric
from mtlda.schema import DepthProtocol, TasksConfig
from mtlda.visualise import apply_lut, colourise_depth, colourise_labels, grey_to_rgb, normals_to_rgb

# Smallest scaled inverse depth y accepted when decoding d = s / y (keeps d finite for y <= 0).
MIN_INVERSE_DEPTH = 1e-6
# Depth maps are drawn over [max_depth / DEPTH_VIS_RANGE, max_depth] of the evaluation protocol.
DEPTH_VIS_RANGE = 100.0

# Relative inverse-depth maps (scale unknown) are drawn with this quantile of each image at the top of the colour map.
RELATIVE_VIS_QUANTILE = 0.95

# The paper's task-balancing weights per task set (Sec. 4.1, "Task balancing"), keyed by sorted codes.
_PAPER_WEIGHTS = {
    ("D", "S"): {"S": 50.0, "D": 1.0},
    ("D", "N", "S"): {"S": 100.0, "D": 1.0, "N": 100.0},
    ("D", "E", "N", "S"): {"S": 100.0, "D": 1.0, "N": 100.0, "E": 50.0},
}


def _check_codes(codes: list[str]) -> None:
    unknown = [c for c in codes if c not in TASK_CODES]
    if unknown or not codes:
        raise ValueError(f"task codes must be a non-empty subset of {sorted(TASK_CODES)}, got {codes}")
    if len(set(codes)) != len(codes):
        raise ValueError(f"task codes must not repeat, got {codes}")


class Task(ABC):
    """A dense prediction task. Subclasses set ``name``, ``code``, ``out_channels``, ``main_metric`` and
    ``higher_is_better`` (metric name -> True when a larger value is better)."""

    name: str
    code: str
    out_channels: int
    main_metric: str
    higher_is_better: dict[str, bool]

    @property
    def target_name(self) -> str:
        """The batch target this task is scored against (its own name unless a subclass says otherwise)."""
        return self.name

    def target(self, batch: Batch) -> Tensor:
        if self.target_name not in batch.targets:
            raise ValueError(f"the batch has no {self.target_name!r} target (targets: {sorted(batch.targets)})")
        return batch.targets[self.target_name]

    def mask(self, batch: Batch) -> Tensor:
        """(B, 1, H, W) bool validity of this task's target; all True when the batch carries no mask."""
        target = self.target(batch)
        mask = batch.masks.get(self.target_name)
        if mask is None:
            return torch.ones((target.shape[0], 1, *target.shape[-2:]), dtype=torch.bool, device=target.device)
        return mask.bool()

    def _check_raw(self, pred_raw: Tensor) -> None:
        if pred_raw.ndim != 4 or pred_raw.shape[1] != self.out_channels:
            raise ValueError(
                f"{self.name} head output must have shape (B, {self.out_channels}, h, w), got {tuple(pred_raw.shape)}"
            )

    @abstractmethod
    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        """Scalar loss of the raw head output (B, C, h, w) against the batch's target."""

    @abstractmethod
    def decode(self, pred_raw: Tensor) -> Tensor:
        """Physical prediction of the raw head output (same resolution)."""

    @abstractmethod
    def new_metric(self) -> StreamingMetric:
        """A fresh streaming metric that takes ``decode`` outputs."""

    @abstractmethod
    def visualise(self, decoded: Tensor) -> Tensor:
        """(B, 3, h, w) float image in [0, 1] of a decoded prediction."""

    @abstractmethod
    def visualise_target(self, batch: Batch) -> Tensor:
        """(B, 3, H, W) float image in [0, 1] of the batch's target."""


class SemsegTask(Task):
    """Semantic segmentation: C logits, cross-entropy with the ignore index, softmax probabilities, mIoU."""

    name = "semseg"
    code = "S"
    main_metric = "miou"

    def __init__(self, num_classes: int, palette: np.ndarray | Tensor, class_names: list[str]) -> None:
        palette = np.asarray(palette)
        if palette.shape != (num_classes, 3):
            raise ValueError(
                f"palette must have shape ({num_classes}, 3) for {num_classes} classes, got {palette.shape}"
            )
        if len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        self.out_channels = num_classes
        self.palette = palette.astype(np.uint8)
        self.class_names = list(class_names)
        self.higher_is_better = {"miou": True, "pixel_acc": True, **{f"iou_{n}": True for n in class_names}}

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        self._check_raw(pred_raw)
        labels = self.target(batch)
        return cross_entropy_loss(upsample_to(pred_raw, labels.shape[-2:]), labels)

    def decode(self, pred_raw: Tensor) -> Tensor:
        """(B, C, h, w) class probabilities."""
        self._check_raw(pred_raw)
        return pred_raw.softmax(dim=1)

    def new_metric(self) -> SegmentationMetric:
        return SegmentationMetric(self.out_channels, self.class_names, target=self.name)

    def visualise(self, decoded: Tensor) -> Tensor:
        return colourise_labels(decoded.argmax(dim=1), self.palette)

    def visualise_target(self, batch: Batch) -> Tensor:
        return colourise_labels(self.target(batch), self.palette)


class DepthTask(Task):
    """Depth: one channel regressing the scaled inverse depth y = s / (d + c); berHu on y; decoded d = s / y - c
    metres (s = ``inv_scale``, c = ``inv_offset`` metres; the official head's encoding is s = 655.36, c = 0.01)."""

    name = "depth"
    code = "D"
    out_channels = 1
    main_metric = "rmse"
    higher_is_better = {
        "abs_rel": False,
        "sq_rel": False,
        "rmse": False,
        "rmse_log": False,
        "delta1": True,
        "delta2": True,
        "delta3": True,
    }

    def __init__(self, inv_scale: float = DEPTH_INV_SCALE_DEFAULT, protocol: DepthProtocol | None = None,
                 inv_offset: float = 0.0) -> None:
        if inv_scale <= 0:
            raise ValueError(f"depth inv_scale must be positive, got {inv_scale}")
        if inv_offset < 0:
            raise ValueError(f"depth inv_offset must be >= 0 metres, got {inv_offset}")
        self.inv_scale = float(inv_scale)
        self.inv_offset = float(inv_offset)
        self.protocol = protocol if protocol is not None else DepthProtocol()

    def encode(self, depth: Tensor, valid: Tensor) -> Tensor:
        """Scaled inverse depth y = s / (d + c) (B, 1, H, W) of metric depth (B, 1, H, W); 0 outside ``valid``."""
        safe = torch.where(valid, depth, torch.ones_like(depth)) + self.inv_offset
        return torch.where(valid, self.inv_scale / safe, 0.0)

    def valid_pixels(self, batch: Batch) -> Tensor:
        return self.mask(batch) & (self.target(batch) > 0)

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        self._check_raw(pred_raw)
        depth = self.target(batch)
        valid = self.valid_pixels(batch)
        return berhu_loss(upsample_to(pred_raw, depth.shape[-2:]), self.encode(depth, valid), valid)

    def decode(self, pred_raw: Tensor) -> Tensor:
        """(B, 1, h, w) metres d = s / max(y, 1e-6) - c."""
        self._check_raw(pred_raw)
        return self.inv_scale / pred_raw.clamp_min(MIN_INVERSE_DEPTH) - self.inv_offset

    def new_metric(self) -> DepthMetric:
        return DepthMetric(self.protocol, target=self.name)

    def visualise(self, decoded: Tensor) -> Tensor:
        top = self.protocol.max_depth
        return colourise_depth(decoded, top / DEPTH_VIS_RANGE, top)

    def visualise_target(self, batch: Batch) -> Tensor:
        depth = torch.where(self.valid_pixels(batch), self.target(batch), 0.0)
        return self.visualise(depth)


class NormalsTask(Task):
    """Surface normals: three unnormalised channels, 1 - cos loss, unit normals, angular error."""

    name = "normals"
    code = "N"
    out_channels = 3
    main_metric = "mean"
    higher_is_better = {"mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True}

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        self._check_raw(pred_raw)
        normals = self.target(batch)
        return normals_cosine_loss(upsample_to(pred_raw, normals.shape[-2:]), normals, self.mask(batch))

    def decode(self, pred_raw: Tensor) -> Tensor:
        """(B, 3, h, w) unit normals."""
        self._check_raw(pred_raw)
        return F.normalize(pred_raw, dim=1)

    def new_metric(self) -> NormalsMetric:
        return NormalsMetric(target=self.name)

    def visualise(self, decoded: Tensor) -> Tensor:
        return normals_to_rgb(decoded)

    def visualise_target(self, batch: Batch) -> Tensor:
        return normals_to_rgb(self.target(batch), self.mask(batch))


class EdgesTask(Task):
    """Edges: one logit channel, class-weighted BCE, sigmoid probability, F1 and ODS-F."""

    name = "edges"
    code = "E"
    out_channels = 1
    main_metric = "f1"
    higher_is_better = {"f1": True, "precision": True, "recall": True, "ods_f": True}

    def __init__(self, tolerance: int = 1) -> None:
        self.tolerance = tolerance

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        self._check_raw(pred_raw)
        edges = self.target(batch)
        return weighted_edge_bce(upsample_to(pred_raw, edges.shape[-2:]), edges.to(pred_raw.dtype), self.mask(batch))

    def decode(self, pred_raw: Tensor) -> Tensor:
        """(B, 1, h, w) edge probability."""
        self._check_raw(pred_raw)
        return pred_raw.sigmoid()

    def new_metric(self) -> EdgesMetric:
        return EdgesMetric(self.tolerance, target=self.name)

    def visualise(self, decoded: Tensor) -> Tensor:
        return grey_to_rgb(decoded)

    def visualise_target(self, batch: Batch) -> Tensor:
        return grey_to_rgb(self.target(batch).float() * self.mask(batch))


class DisparityTask(Task):
    """Self-supervised depth (SDE): one sigmoid disparity channel, trained by the photometric loss of the ``sde``
    scenario (it has no supervised loss); decoded to metres by :func:`~mtlda.losses.photometric.disp_to_depth` with
    ``min_depth``/``max_depth``; evaluated against the ground-truth ``depth`` target under ``protocol``, which must
    use median scaling (monocular depth is known up to scale only). Not selectable through ``tasks.names``.
    """

    name = "disp"
    code = ""
    out_channels = 1
    main_metric = "abs_rel"
    higher_is_better = dict(DepthTask.higher_is_better)
    target_name = "depth"

    def __init__(self, min_depth: float = 0.1, max_depth: float = 100.0, protocol: DepthProtocol | None = None) -> None:
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < sde.min_depth < sde.max_depth, got {min_depth} and {max_depth}")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.protocol = protocol if protocol is not None else DepthProtocol(median_scaling=True, per_image=True)
        if not self.protocol.median_scaling:
            raise ValueError(
                "self-supervised monocular depth is known up to scale only: evaluate it with "
                "tasks.depth_protocol.median_scaling=true"
            )

    def target(self, batch: Batch) -> Tensor:
        """(B, 1, H, W) ground-truth depth in metres (the batch's ``depth`` target)."""
        if self.target_name not in batch.targets:
            raise ValueError(
                f"evaluating self-supervised depth needs the ground-truth {self.target_name!r} target in the batch "
                f"(targets: {sorted(batch.targets)}); load the validation split with the depth task"
            )
        return batch.targets[self.target_name]

    def mask(self, batch: Batch) -> Tensor:
        """(B, 1, H, W) bool: the depth mask and a positive ground-truth depth."""
        depth = self.target(batch)
        mask = batch.masks.get(self.target_name)
        valid = depth > 0
        return valid if mask is None else valid & mask.bool()

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        raise ValueError(
            "the disparity task has no supervised loss: it is trained by the photometric loss of the sde scenario "
            "(scripts/sde.py)"
        )

    def decode(self, pred_raw: Tensor) -> Tensor:
        """(B, 1, h, w) metres of a sigmoid disparity (B, 1, h, w), within [min_depth, max_depth]."""
        self._check_raw(pred_raw)
        return disp_to_depth(pred_raw, self.min_depth, self.max_depth)[1]

    def new_metric(self) -> DepthMetric:
        return DepthMetric(self.protocol, target=self.target_name)

    def visualise(self, decoded: Tensor) -> Tensor:
        """Inverse depth relative to each image's 95th percentile (the scale of the prediction is arbitrary)."""
        return _relative_inverse_depth_rgb(decoded, decoded > 0)

    def visualise_target(self, batch: Batch) -> Tensor:
        return _relative_inverse_depth_rgb(self.target(batch), self.mask(batch))


def _relative_inverse_depth_rgb(depth: Tensor, valid: Tensor) -> Tensor:
    """(B, 3, H, W) magma colours of 1 / depth (B, 1, H, W) divided per image by its ``RELATIVE_VIS_QUANTILE``
    quantile over ``valid`` pixels (near is bright); invalid pixels are black. Scale-invariant, so a prediction
    known up to scale and its ground truth look alike."""
    inverse = torch.where(valid, 1.0 / torch.where(valid, depth, torch.ones_like(depth)), torch.nan).float()
    top = torch.nanquantile(inverse.flatten(1), RELATIVE_VIS_QUANTILE, dim=1)
    top = torch.where(torch.isfinite(top) & (top > 0), top, torch.ones_like(top))
    relative = torch.nan_to_num(inverse / top.reshape(-1, 1, 1, 1), nan=0.0)
    return apply_lut(relative) * valid


def build_tasks(
    codes: list[str],
    num_classes: int,
    palette: np.ndarray | Tensor,
    class_names: list[str],
    cfg: TasksConfig,
) -> dict[str, Task]:
    """Task objects for the codes (S, D, N, E), keyed by task name in sorted-name order."""
    _check_codes(codes)
    factories = {
        "S": lambda: SemsegTask(num_classes, palette, class_names),
        "D": lambda: DepthTask(cfg.depth_inv_scale, cfg.depth_protocol, cfg.depth_inv_offset),
        "N": lambda: NormalsTask(),
        "E": lambda: EdgesTask(cfg.edge_tolerance),
    }
    return {TASK_CODES[c]: factories[c]() for c in sorted(codes, key=lambda c: TASK_CODES[c])}


def default_weights(codes: list[str]) -> dict[str, float]:
    """The paper's loss weights by task name: S-D 50/1, S-D-N 100/1/100, S-D-N-E 100/1/100/50.

    A single task gets 1, and any other task set (not studied in the paper) 1 for every task.
    """
    _check_codes(codes)
    by_code = _PAPER_WEIGHTS.get(tuple(sorted(codes)), {c: 1.0 for c in codes})
    return {TASK_CODES[c]: by_code[c] for c in sorted(codes, key=lambda c: TASK_CODES[c])}


def task_weights(cfg: TasksConfig) -> dict[str, float]:
    """Loss weights by task name: ``cfg.weights`` (by code) when given, else :func:`default_weights`."""
    if not cfg.weights:
        return default_weights(cfg.names)
    _check_codes(cfg.names)
    missing = sorted(set(cfg.names) - set(cfg.weights))
    extra = sorted(set(cfg.weights) - set(cfg.names))
    if missing or extra:
        raise ValueError(
            f"tasks.weights must give one weight per task code {sorted(cfg.names)}; "
            f"missing {missing}, unexpected {extra}"
        )
    return {TASK_CODES[c]: float(cfg.weights[c]) for c in sorted(cfg.names, key=lambda c: TASK_CODES[c])}


def delta_directions(tasks: dict[str, Task]) -> dict[str, dict[str, bool]]:
    """Per task, the metric that enters the multi-task delta (its main metric, as in the paper) and whether higher
    is better: the ``higher_is_better`` argument of :func:`mtlda.metrics.multitask_delta`."""
    return {name: {t.main_metric: t.higher_is_better[t.main_metric]} for name, t in sorted(tasks.items())}


def metric_protocols(tasks: dict[str, Task]) -> dict[str, str]:
    """Per task, the protocol description of its metric (the key of stored references)."""
    return {name: t.new_metric().protocol_description() for name, t in sorted(tasks.items())}
