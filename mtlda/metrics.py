"""Streaming evaluation metrics, their DDP reduction, and the multi-task delta against stored references.

Every metric accumulates sums and counts only (confusion matrix, histograms, float64 sums), so results over a
split do not depend on the batch size or the order of batches, and summing the states of several ranks
(``all_reduce``) gives exactly the single-process result. Predictions may come at any resolution: they are
resized to the target resolution (bilinear, ``align_corners=False``; integer label maps must already match).
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
from pathlib import Path
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import Tensor

from mtlda.constants import IGNORE_INDEX
from mtlda.data.batch import Batch
from mtlda.geometry import median_scale
from mtlda.schema import DepthProtocol

REFERENCES_VERSION = 1


def _resize_to(pred: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    return F.interpolate(pred.float(), size=tuple(size), mode="bilinear", align_corners=False)


def _target(batch: Batch, name: str) -> Tensor:
    if name not in batch.targets:
        raise ValueError(f"the batch has no {name!r} target (targets: {sorted(batch.targets)})")
    return batch.targets[name]


def _mask(batch: Batch, name: str, like: Tensor) -> Tensor:
    """The (B, 1, H, W) bool mask of ``name``, all True when the batch carries none."""
    mask = batch.masks.get(name)
    if mask is None:
        return torch.ones((like.shape[0], 1, *like.shape[-2:]), dtype=torch.bool, device=like.device)
    return mask.bool()


class StreamingMetric:
    """Base class: named state tensors of sums/counts, reset, DDP reduction.

    Subclasses register their state in ``_new_state`` and implement ``update``, ``compute`` and
    ``protocol_description``.
    """

    def __init__(self) -> None:
        self._state: dict[str, Tensor] = {}
        self.reset()

    def _new_state(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        self._state = self._new_state()

    def _follow(self, device: torch.device) -> None:
        """Keep the state on the device the predictions come from."""
        for key, value in self._state.items():
            if value.device != device:
                self._state[key] = value.to(device)

    def state_tensors(self) -> list[Tensor]:
        """The state, in a fixed (sorted-name) order: summing these across ranks is the exact reduction."""
        return [self._state[k] for k in sorted(self._state)]

    def load_state(self, tensors: list[Tensor]) -> None:
        """Replace the state by tensors in the order of :meth:`state_tensors` (e.g. sums over ranks)."""
        keys = sorted(self._state)
        if len(tensors) != len(keys):
            raise ValueError(f"expected {len(keys)} state tensors ({keys}), got {len(tensors)}")
        for key, value in zip(keys, tensors):
            if value.shape != self._state[key].shape:
                expected = tuple(self._state[key].shape)
                raise ValueError(f"state {key!r} must have shape {expected}, got {tuple(value.shape)}")
            self._state[key] = value.to(self._state[key].dtype).clone()

    def all_reduce(self) -> None:
        """Sum the state over all ranks when torch.distributed is initialised (no-op otherwise)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        for key in sorted(self._state):
            value = self._state[key]
            reduced = value.to(device) if device is not None else value.clone()
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            self._state[key] = reduced.to(value.device)

    def update(self, pred: Tensor, batch: Batch) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def protocol_description(self) -> str:
        raise NotImplementedError


class SegmentationMetric(StreamingMetric):
    """mIoU (%), per-class IoU (%) and pixel accuracy (%) from one confusion matrix over the whole split.

    IoU_c = TP / (TP + FP + FN) over pixels whose label is not ``IGNORE_INDEX``. A class absent from both the
    labels and the predictions has no IoU (NaN) and is left out of the mean (NaN-skip, as the official Cityscapes
    evaluation does); a class predicted but never labelled scores 0.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None, target: str = "semseg") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        self.target = target
        super().__init__()

    def _new_state(self) -> dict[str, Tensor]:
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    def update(self, pred: Tensor, batch: Batch) -> None:
        """pred: class probabilities or logits (B, C, h, w), or class ids (B, H, W) int64 at label resolution."""
        labels = _target(batch, self.target)
        if pred.ndim == 4:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"prediction has {pred.shape[1]} channels, expected {self.num_classes} classes")
            pred = _resize_to(pred, labels.shape[-2:]).argmax(dim=1)
        if pred.shape != labels.shape:
            raise ValueError(f"prediction labels {tuple(pred.shape)} do not match targets {tuple(labels.shape)}")
        valid = labels != IGNORE_INDEX
        gt = labels[valid].long()
        if gt.numel() and (gt.min() < 0 or gt.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}) or be {IGNORE_INDEX}, "
                f"found {gt.min().item()}..{gt.max().item()}"
            )
        self._follow(pred.device)
        index = gt * self.num_classes + pred[valid].long()
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self._state["confusion"] += counts.reshape(self.num_classes, self.num_classes)

    def iou_per_class(self) -> Tensor:
        """(C,) float64 IoU in [0, 1], NaN for classes absent from labels and predictions."""
        conf = self._state["confusion"].double()
        tp = conf.diag()
        denom = conf.sum(0) + conf.sum(1) - tp
        return torch.where(denom > 0, tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))

    def compute(self) -> dict[str, float]:
        conf = self._state["confusion"]
        iou = self.iou_per_class()
        present = ~torch.isnan(iou)
        total = conf.sum().item()
        out = {
            "miou": 100 * iou[present].mean().item() if present.any() else float("nan"),
            "pixel_acc": 100 * conf.diag().sum().item() / total if total else float("nan"),
        }
        for name, value in zip(self.class_names, iou.tolist()):
            out[f"iou_{name}"] = 100 * value
        return out

    def protocol_description(self) -> str:
        return (
            f"semseg: {self.num_classes} classes, one confusion matrix over the split at label resolution, "
            f"label {IGNORE_INDEX} ignored, classes absent from labels and predictions skipped in the mean"
        )


_DEPTH_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


class DepthMetric(StreamingMetric):
    """AbsRel, SqRel, RMSE (m), RMSE-log, delta < 1.25^k (%) under a :class:`DepthProtocol`.

    Evaluated pixels: depth mask and min_depth < GT < max_depth. With ``median_scaling`` the prediction is
    multiplied per image by median(GT) / median(prediction) over those pixels; then it is clamped into
    [min_depth, max_depth]. Per-pixel averaging pools all evaluated pixels of the split (RMSE = sqrt of the
    pooled mean squared error); per-image averaging computes every metric per image and averages over images
    with at least one evaluated pixel (per-image RMSE = mean of the per-image RMSEs).
    """

    def __init__(self, protocol: DepthProtocol | None = None, target: str = "depth") -> None:
        self.protocol = protocol if protocol is not None else DepthProtocol()
        if not 0 < self.protocol.min_depth < self.protocol.max_depth:
            raise ValueError(
                "depth protocol needs 0 < min_depth < max_depth, "
                f"got {self.protocol.min_depth}, {self.protocol.max_depth}"
            )
        self.target = target
        super().__init__()

    def _new_state(self) -> dict[str, Tensor]:
        return {
            "sums": torch.zeros(len(_DEPTH_NAMES), dtype=torch.float64),
            "count": torch.zeros((), dtype=torch.float64),
        }

    def update(self, pred: Tensor, batch: Batch) -> None:
        """pred: depth (B, 1, h, w) metres."""
        gt = _target(batch, self.target)
        if pred.ndim != 4 or pred.shape[1] != 1:
            raise ValueError(f"depth prediction must have shape (B, 1, h, w), got {tuple(pred.shape)}")
        p = self.protocol
        pred = _resize_to(pred, gt.shape[-2:]).double()
        gt = gt.double()
        valid = _mask(batch, self.target, gt) & (gt > p.min_depth) & (gt < p.max_depth)
        if p.median_scaling:
            pred = median_scale(pred, gt, valid)
        pred = pred.clamp(p.min_depth, p.max_depth)
        gt_safe = torch.where(valid, gt, torch.ones_like(gt))
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
            means[2:4] = means[2:4].sqrt()
            used = n > 0
            self._state["sums"] += (means * used).sum(1)
            self._state["count"] += used.sum()
        else:
            self._state["sums"] += per_pixel.flatten(1).sum(1)
            self._state["count"] += valid.sum()

    def compute(self) -> dict[str, float]:
        count = self._state["count"].item()
        if count == 0:
            return {name: float("nan") for name in _DEPTH_NAMES}
        means = (self._state["sums"] / count).tolist()
        out = dict(zip(_DEPTH_NAMES, means))
        if not self.protocol.per_image:
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
            f"{'per-image' if p.per_image else 'per-pixel'} averaging"
        )


# Angular-error histogram: 0.01 degree bins over [0, 180].
_ANGLE_BIN_DEG = 0.01
_ANGLE_BINS = 18000
_ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


class NormalsMetric(StreamingMetric):
    """Angular error (degrees) between unit normals per valid pixel: mean, median, % under 11.25/22.5/30.

    The error is atan2(|p x g|, p . g) with both vectors normalised. The mean and the threshold fractions are
    exact; the median over all pixels of the split is read from a histogram of 0.01-degree bins (the centre of
    the bin that holds the lower median), so it is exact to 0.005 degrees and reducible across ranks. Valid
    pixels: the normals mask and a non-zero target.
    """

    def __init__(self, target: str = "normals") -> None:
        self.target = target
        super().__init__()

    def _new_state(self) -> dict[str, Tensor]:
        return {
            "histogram": torch.zeros(_ANGLE_BINS, dtype=torch.int64),
            "sum": torch.zeros((), dtype=torch.float64),
            "count": torch.zeros((), dtype=torch.int64),
            "under": torch.zeros(len(_ANGLE_THRESHOLDS), dtype=torch.int64),
        }

    @staticmethod
    def angular_error(pred: Tensor, target: Tensor) -> Tensor:
        """(B, H, W) float64 degrees between (B, 3, H, W) vector fields."""
        p = F.normalize(pred.double(), dim=1)
        g = F.normalize(target.double(), dim=1)
        cross = torch.linalg.cross(p, g, dim=1).norm(dim=1)
        return torch.rad2deg(torch.atan2(cross, (p * g).sum(dim=1)))

    def update(self, pred: Tensor, batch: Batch) -> None:
        """pred: normals (B, 3, h, w) (normalised here)."""
        gt = _target(batch, self.target)
        if pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"normals prediction must have shape (B, 3, h, w), got {tuple(pred.shape)}")
        pred = _resize_to(pred, gt.shape[-2:])
        valid = (_mask(batch, self.target, gt) & (gt.norm(dim=1, keepdim=True) > 0))[:, 0]
        angles = self.angular_error(pred, gt)[valid]
        self._follow(pred.device)
        bins = (angles / _ANGLE_BIN_DEG).long().clamp(0, _ANGLE_BINS - 1)
        self._state["histogram"] += torch.bincount(bins, minlength=_ANGLE_BINS)
        self._state["sum"] += angles.sum()
        self._state["count"] += angles.numel()
        self._state["under"] += torch.stack([(angles < t).sum() for t in _ANGLE_THRESHOLDS])

    def compute(self) -> dict[str, float]:
        count = self._state["count"].item()
        names = ["mean", "median"] + [f"within_{t:g}" for t in _ANGLE_THRESHOLDS]
        if count == 0:
            return {name: float("nan") for name in names}
        cumulative = self._state["histogram"].cumsum(0)
        median_bin = torch.searchsorted(cumulative, torch.tensor((count + 1) // 2, device=cumulative.device)).item()
        values = [self._state["sum"].item() / count, (median_bin + 0.5) * _ANGLE_BIN_DEG]
        values += [100 * u / count for u in self._state["under"].tolist()]
        return dict(zip(names, values))

    def protocol_description(self) -> str:
        return (
            "normals: angular error in degrees per valid pixel over the split, median from 0.01-degree bins, "
            f"% under {', '.join(f'{t:g}' for t in _ANGLE_THRESHOLDS)} degrees"
        )


class EdgesMetric(StreamingMetric):
    """Edge F1 at threshold 0.5 and ODS F-measure (best fixed threshold over the split), in %.

    Counts are accumulated at ``num_thresholds`` thresholds k / (num_thresholds + 1). A predicted edge pixel
    (probability >= threshold) is correct if a GT edge lies within ``tolerance`` pixels (Chebyshev distance,
    max-pool dilation); a GT edge pixel is recalled if a predicted edge lies within the tolerance. This
    approximates the BSDS benchmark, which matches edge pixels one-to-one (bipartite matching): here one
    predicted pixel may match several GT pixels and vice versa. Pixels outside the edges mask are ignored.
    """

    def __init__(self, tolerance: int = 1, num_thresholds: int = 99, target: str = "edges") -> None:
        if tolerance < 0:
            raise ValueError(f"edge tolerance must be >= 0 pixels, got {tolerance}")
        if num_thresholds < 1 or (num_thresholds + 1) % 2:
            raise ValueError(f"num_thresholds must be odd (so that 0.5 is one of them), got {num_thresholds}")
        self.tolerance = tolerance
        self.num_thresholds = num_thresholds
        self.target = target
        super().__init__()

    @property
    def thresholds(self) -> Tensor:
        n = self.num_thresholds
        return torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)

    def _new_state(self) -> dict[str, Tensor]:
        # rows: predicted edges, predicted edges near a GT edge, GT edges near a prediction; plus the GT edge count
        return {
            "counts": torch.zeros(3, self.num_thresholds, dtype=torch.int64),
            "gt_edges": torch.zeros((), dtype=torch.int64),
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

    def update(self, pred: Tensor, batch: Batch) -> None:
        """pred: edge probabilities (B, 1, h, w) in [0, 1]."""
        gt = _target(batch, self.target)
        if pred.ndim != 4 or pred.shape[1] != 1:
            raise ValueError(f"edge prediction must have shape (B, 1, h, w), got {tuple(pred.shape)}")
        pred = _resize_to(pred, gt.shape[-2:]).double()
        valid = _mask(batch, self.target, gt)
        gt_edge = (gt > 0.5) & valid
        prob = torch.where(valid, pred, torch.full_like(pred, -1.0))
        near_gt = self._dilate(gt_edge.double()) > 0
        # The dilation of {prob >= t} is {max-pooled prob >= t}, so one pooling serves every threshold.
        near_pred = self._dilate(prob)
        self._follow(pred.device)
        self._state["counts"][0] += self._count_at_or_above(prob[valid])
        self._state["counts"][1] += self._count_at_or_above(prob[valid & near_gt])
        self._state["counts"][2] += self._count_at_or_above(near_pred[gt_edge])
        self._state["gt_edges"] += gt_edge.sum()

    def f_measure_curve(self) -> tuple[Tensor, Tensor, Tensor]:
        """(precision, recall, F) at every threshold, float64 in [0, 1] (0 where undefined)."""
        predicted, correct, recalled = self._state["counts"].double()
        gt_edges = self._state["gt_edges"].double()
        precision = torch.where(predicted > 0, correct / predicted.clamp_min(1), 0.0)
        recall = torch.where(gt_edges > 0, recalled / gt_edges.clamp_min(1), 0.0)
        denom = precision + recall
        f = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), 0.0)
        return precision, recall, f

    def compute(self) -> dict[str, float]:
        precision, recall, f = self.f_measure_curve()
        half = self.num_thresholds // 2
        best = int(f.argmax())
        return {
            "f1": 100 * f[half].item(),
            "precision": 100 * precision[half].item(),
            "recall": 100 * recall[half].item(),
            "ods_f": 100 * f[best].item(),
            "ods_threshold": self.thresholds[best].item(),
        }

    def protocol_description(self) -> str:
        return (
            f"edges: F1 at threshold 0.5 and ODS-F over {self.num_thresholds} thresholds, matching tolerance "
            f"{self.tolerance} px (max-pool dilation, approximates BSDS bipartite matching)"
        )


def multitask_delta(
    metrics: Mapping[str, Mapping[str, float]],
    references: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, Mapping[str, bool]],
) -> float:
    """The multi-task delta (%) of Vandenhende et al., as in the paper (Sec. 4.1).

    100 * mean over tasks t of mean over the metrics m listed in ``higher_is_better[t]`` of
    (-1)^l (M_m - R_m) / R_m, with l = 1 when lower is better. ``metrics`` and ``references`` map task -> metric
    -> value; the paper uses one metric per task (semseg mIoU, depth RMSE, normals mean error, edges F1).
    """
    if not higher_is_better:
        raise ValueError("multitask_delta needs at least one task")
    per_task = []
    for task in sorted(higher_is_better):
        chosen = higher_is_better[task]
        if not chosen:
            raise ValueError(f"no delta metrics chosen for task {task!r}")
        if task not in metrics:
            raise ValueError(f"no metrics for task {task!r}; got tasks {sorted(metrics)}")
        if task not in references:
            raise ValueError(
                f"no single-task reference for task {task!r}; train the single-task model and record it with "
                "save_references"
            )
        terms = []
        for name in sorted(chosen):
            value, ref = metrics[task].get(name), references[task].get(name)
            if value is None or ref is None:
                where = "metrics" if value is None else "references"
                raise ValueError(f"metric {task}/{name} is missing from the {where}")
            if not (math.isfinite(value) and math.isfinite(ref)) or ref == 0:
                raise ValueError(f"cannot form a relative difference for {task}/{name}: value {value}, reference {ref}")
            sign = 1.0 if chosen[name] else -1.0
            terms.append(sign * (value - ref) / ref)
        per_task.append(sum(terms) / len(terms))
    return 100 * sum(per_task) / len(per_task)


def _read_references(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"references file {path} does not exist; record single-task runs with save_references")
    data = yaml.safe_load(path.read_text()) or {}
    well_formed = isinstance(data, dict) and isinstance(data.get("entries"), list)
    if not well_formed or data.get("version") != REFERENCES_VERSION:
        raise ValueError(
            f"{path} is not a version-{REFERENCES_VERSION} references file (expected keys 'version: "
            f"{REFERENCES_VERSION}' and 'entries: [...]')"
        )
    return data


def load_references(path: str | Path, dataset: str, protocol: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Reference metrics (task -> metric -> value) recorded for ``dataset`` under the given per-task protocols.

    ``protocol`` maps each task to its metric's ``protocol_description()``. A task without any entry for the data
    set is left out of the result; a task whose only entries were recorded under another protocol is an error.
    """
    data = _read_references(Path(path))
    out: dict[str, dict[str, float]] = {}
    for task in sorted(protocol):
        candidates = [e for e in data["entries"] if e.get("dataset") == dataset and e.get("task") == task]
        matching = [e for e in candidates if e.get("protocol") == protocol[task]]
        if matching:
            out[task] = {k: float(v) for k, v in matching[-1]["metrics"].items()}
        elif candidates:
            recorded = "; ".join(sorted({str(e.get("protocol")) for e in candidates}))
            raise ValueError(
                f"references for {dataset}/{task} in {path} were recorded under a different protocol: "
                f"{recorded!r}, but this evaluation uses {protocol[task]!r}; re-evaluate the single-task model "
                "under this protocol"
            )
    return out


def save_references(
    path: str | Path,
    dataset: str,
    protocol: Mapping[str, str],
    metrics: Mapping[str, Mapping[str, float]],
    source: str,
    date: str | None = None,
) -> None:
    """Record single-task reference metrics for every task of ``metrics``, replacing the entry with the same
    data set, task and protocol. The file is created if missing and written atomically."""
    path = Path(path)
    data = _read_references(path) if path.exists() else {"version": REFERENCES_VERSION, "entries": []}
    stamp = date or datetime.date.today().isoformat()
    for task in sorted(metrics):
        if task not in protocol:
            raise ValueError(f"no protocol given for task {task!r}")
        entry = {
            "dataset": dataset,
            "task": task,
            "protocol": protocol[task],
            "metrics": {k: float(v) for k, v in sorted(metrics[task].items())},
            "source": source,
            "date": stamp,
        }
        data["entries"] = [
            e
            for e in data["entries"]
            if not (e.get("dataset") == dataset and e.get("task") == task and e.get("protocol") == protocol[task])
        ] + [entry]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
