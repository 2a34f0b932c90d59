"""Surface normals: three unnormalised channels, 1 - cos loss, unit normals, angular error."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mtlda.data.batch import Batch
from mtlda.data.targets import UNIT_VECTORS
from mtlda.geometry import unit_vectors
from mtlda.losses.supervised import normals_cosine_loss
from mtlda.metrics import NormalsMetric
from mtlda.resize import resize_to
from mtlda.tasks.base import Task
from mtlda.tasks.registry import register_task
from mtlda.visualise import normals_to_rgb


@register_task
class NormalsTask(Task):
    """Camera-facing unit surface normals (camera frame x right, y down, z forward)."""

    name = "normals"
    code = "N"
    target_kind = UNIT_VECTORS
    main_metric = "mean"
    columns = (("mean", "mean err deg", False), ("median", "median err deg", False), ("within_11.25", "<11.25 %", True))
    out_channels = 3

    def __init__(self) -> None:
        self.higher_is_better = {"mean": False, "median": False, "within_11.25": True, "within_22.5": True,
                                 "within_30": True}

    @classmethod
    def from_config(cls, cfg: Any, info: Any) -> "NormalsTask":
        return cls()

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        self.check_raw(pred_raw)
        normals = self.target(batch)
        return normals_cosine_loss(resize_to(pred_raw, normals.shape[-2:]), normals, self.mask(batch))

    def decoding_rule(self) -> str:
        return "unnormalised normal v: n = v / |v|, camera frame (x right, y down, z forward), facing the camera"

    def decode(self, pred_raw: Tensor) -> Tensor:
        """(B, 3, h, w) unit normals."""
        self.check_raw(pred_raw)
        return unit_vectors(pred_raw)

    def output_map(self, decoded: Tensor) -> Tensor:
        """(3, H, W) unit normals (renormalised after resizing)."""
        return unit_vectors(decoded[0], dim=0)

    def new_metric(self) -> NormalsMetric:
        return NormalsMetric()

    def visualise(self, decoded: Tensor) -> Tensor:
        return normals_to_rgb(decoded)

    def visualise_target(self, batch: Batch) -> Tensor:
        return normals_to_rgb(self.target(batch), self.mask(batch))

    def discriminator_input(self, pred_raw: Tensor, context: Any) -> Tensor:
        """The L2-normalised prediction (B, 3, H, W)."""
        return unit_vectors(pred_raw)

    def visualise_discriminator_input(self, values: Tensor) -> Tensor:
        return normals_to_rgb(values)

    def prior_prediction(self, mean: Tensor) -> Tensor:
        """The mean direction, normalised."""
        return unit_vectors(mean)
