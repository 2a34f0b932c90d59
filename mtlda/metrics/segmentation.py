"""mIoU, per-class IoU and pixel accuracy from one confusion matrix over the whole split."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlda.constants import IGNORE_INDEX
from mtlda.metrics.base import StreamingMetric
from mtlda.resize import resize_to


class SegmentationMetric(StreamingMetric):
    """mIoU (%), per-class IoU (%) and pixel accuracy (%) from one confusion matrix over the whole split.

    IoU_c = TP / (TP + FP + FN) over pixels whose label is not ``IGNORE_INDEX``. A class absent from both the
    labels and the predictions has no IoU (NaN) and is left out of the mean (NaN-skip, as the official Cityscapes
    evaluation does); a class predicted but never labelled scores 0.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        super().__init__()

    def _new_state(self) -> dict[str, Tensor]:
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """pred: class probabilities or logits (B, C, h, w), or class ids (B, H, W) at label resolution;
        target (B, H, W) int64 labels (``IGNORE_INDEX`` skipped); ``mask`` (B, 1, H, W) optionally excludes more."""
        if pred.ndim == 4:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"prediction has {pred.shape[1]} channels, expected {self.num_classes} classes")
            pred = resize_to(pred, target.shape[-2:]).argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction labels {tuple(pred.shape)} do not match targets {tuple(target.shape)}")
        valid = target != IGNORE_INDEX
        if mask is not None:
            valid = valid & mask.bool()[:, 0]
        gt = target[valid].long()
        if gt.numel() and (gt.min() < 0 or gt.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}) or be {IGNORE_INDEX}, "
                f"found {gt.min().item()}..{gt.max().item()}"
            )
        self._follow(pred.device)
        index = gt * self.num_classes + pred[valid].long()
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self._state["confusion"] += counts.reshape(self.num_classes, self.num_classes)

    def confusion(self) -> Tensor:
        """(C, C) int64 counts: rows are labels, columns predictions."""
        return self._state["confusion"].clone()

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

    def details(self) -> dict[str, Any]:
        return {"confusion": self._state["confusion"].cpu().tolist(), "class_names": list(self.class_names)}

    def protocol_description(self) -> str:
        return (
            f"semseg: {self.num_classes} classes, one confusion matrix over the split at label resolution, "
            f"label {IGNORE_INDEX} ignored, classes absent from labels and predictions skipped in the mean"
        )
