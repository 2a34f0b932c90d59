"""Edges: one logit channel, class-weighted binary cross-entropy, sigmoid probability, the paper's two-class F1."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mtlda.data.batch import Batch
from mtlda.data.targets import BINARY_MAP
from mtlda.losses.supervised import weighted_edge_bce
from mtlda.metrics import EdgesMetric
from mtlda.resize import resize_to
from mtlda.tasks.base import Task
from mtlda.tasks.registry import register_task
from mtlda.visualise import grey_to_rgb


@register_task
class EdgesTask(Task):
    """Edge maps in {0, 1}; scored by the official two-class mean F1 (the paper's E column), edge F1 and ODS-F."""

    name = "edges"
    code = "E"
    target_kind = BINARY_MAP
    main_metric = "mean_f1"
    columns = (("mean_f1", "mean F1 %", True), ("ods_f", "ODS-F %", True), ("f1_edge", "edge F1 %", True))
    out_channels = 1

    def __init__(self, tolerance: int = 1) -> None:
        self.tolerance = tolerance
        self.higher_is_better = {"mean_f1": True, "f1_edge": True, "precision": True, "recall": True, "ods_f": True}

    @classmethod
    def from_config(cls, cfg: Any, info: Any) -> "EdgesTask":
        return cls(cfg.tasks.edge_tolerance)

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        self.check_raw(pred_raw)
        edges = self.target(batch)
        return weighted_edge_bce(resize_to(pred_raw, edges.shape[-2:]), edges.to(pred_raw.dtype), self.mask(batch))

    def decoding_rule(self) -> str:
        return "edge logit: probability = sigmoid"

    def decode(self, pred_raw: Tensor) -> Tensor:
        """(B, 1, h, w) edge probability."""
        self.check_raw(pred_raw)
        return pred_raw.sigmoid()

    def new_metric(self) -> EdgesMetric:
        return EdgesMetric(self.tolerance)

    def visualise(self, decoded: Tensor) -> Tensor:
        return grey_to_rgb(decoded)

    def visualise_target(self, batch: Batch) -> Tensor:
        return grey_to_rgb(self.target(batch).float() * self.mask(batch))

    def discriminator_input(self, pred_raw: Tensor, context: Any) -> Tensor:
        """The edge probability (B, 1, H, W)."""
        return pred_raw.sigmoid()
