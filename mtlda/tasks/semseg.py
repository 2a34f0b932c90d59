"""Semantic segmentation: C logits, cross-entropy with the ignore index, softmax probabilities, mIoU."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from mtlda.constants import IGNORE_INDEX
from mtlda.data.batch import Batch
from mtlda.data.targets import LABEL_MAP
from mtlda.losses.adversarial import entropy_map
from mtlda.losses.supervised import cross_entropy_loss
from mtlda.metrics import SegmentationMetric
from mtlda.resize import resize_to
from mtlda.tasks.base import Task
from mtlda.tasks.registry import register_task
from mtlda.visualise import colourise_entropy, colourise_labels


@register_task
class SemsegTask(Task):
    """Semantic segmentation over a data set's class set (``palette`` (C, 3) uint8, ``class_names``)."""

    name = "semseg"
    code = "S"
    target_kind = LABEL_MAP
    main_metric = "miou"
    columns = (("miou", "mIoU %", True), ("pixel_acc", "pix.acc %", True))

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

    @classmethod
    def from_config(cls, cfg: Any, info: Any) -> "SemsegTask":
        return cls(info.num_classes, info.palette, list(info.class_names))

    def mask(self, batch: Batch) -> Tensor:
        """(B, 1, H, W) bool: labelled pixels (not ``IGNORE_INDEX``)."""
        return (self.target(batch) != IGNORE_INDEX)[:, None]

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        self.check_raw(pred_raw)
        labels = self.target(batch)
        return cross_entropy_loss(resize_to(pred_raw, labels.shape[-2:]), labels)

    def decoding_rule(self) -> str:
        return "logits: class = argmax over channels, probabilities = softmax over channels"

    def decode(self, pred_raw: Tensor) -> Tensor:
        """(B, C, h, w) class probabilities."""
        self.check_raw(pred_raw)
        return pred_raw.softmax(dim=1)

    def output_map(self, decoded: Tensor) -> Tensor:
        """(H, W) int64 class ids."""
        return decoded.argmax(1)[0]

    def new_metric(self) -> SegmentationMetric:
        return SegmentationMetric(self.out_channels, self.class_names)

    def score(self, metric: SegmentationMetric, decoded: Tensor, batch: Batch) -> None:
        metric.update(decoded, self.target(batch))

    def visualise(self, decoded: Tensor) -> Tensor:
        return colourise_labels(decoded.argmax(dim=1), self.palette)

    def visualise_target(self, batch: Batch) -> Tensor:
        return colourise_labels(self.target(batch), self.palette)

    def legend(self) -> tuple[list[str], np.ndarray]:
        return self.class_names, self.palette

    def discriminator_input(self, pred_raw: Tensor, context: Any) -> Tensor:
        """ADVENT's weighted self-information map (B, C, H, W) of the softmax (paper Eq. 10)."""
        return entropy_map(pred_raw)

    def visualise_discriminator_input(self, values: Tensor) -> Tensor:
        """The normalised entropy (the per-class terms summed), viridis."""
        return colourise_entropy(values)

    def prior_terms(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """One-hot class counts (B, C, H, W) over labelled pixels."""
        labels = self.target(batch)
        valid = (labels != IGNORE_INDEX)[:, None].float()
        onehot = F.one_hot(labels.clamp(0, self.out_channels - 1), self.out_channels).permute(0, 3, 1, 2).float()
        return onehot * valid, valid

    def prior_prediction(self, mean: Tensor) -> Tensor:
        """The most frequent class as a one-hot (1, C, H, W) map."""
        return F.one_hot(mean.argmax(1), self.out_channels).permute(0, 3, 1, 2).float()

    def resize_prior(self, pred: Tensor, size: tuple[int, int]) -> Tensor:
        return pred if tuple(pred.shape[-2:]) == tuple(size) else F.interpolate(pred, size=tuple(size), mode="nearest")
