"""Self-supervised depth (SDE): a sigmoid disparity head trained by the photometric loss, scored against depth."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mtlda.constants import SDE_MAX_DEPTH, SDE_MIN_DEPTH
from mtlda.data.batch import Batch
from mtlda.errors import UserInputError
from mtlda.geometry import disp_to_depth
from mtlda.schema import DepthProtocol
from mtlda.tasks.depth import DEPTH_HIGHER_IS_BETTER, DepthMapTask
from mtlda.tasks.registry import register_task


@register_task
class DisparityTask(DepthMapTask):
    """One sigmoid disparity channel, trained by the photometric loss of the ``sde`` scenario (no supervised loss),
    decoded to metres by :func:`~mtlda.geometry.disp_to_depth` with ``min_depth``/``max_depth``, evaluated
    against the ground-truth ``depth`` target under ``protocol``, which must use median scaling (monocular depth is
    known up to scale only). Not selectable through ``tasks.names`` (no code)."""

    name = "disp"
    code = ""
    target_kind = None  # scored against the depth target
    main_metric = "abs_rel"

    def __init__(self, min_depth: float = SDE_MIN_DEPTH, max_depth: float = SDE_MAX_DEPTH,
                 protocol: DepthProtocol | None = None) -> None:
        if not 0 < min_depth < max_depth:
            raise UserInputError(f"need 0 < sde.min_depth < sde.max_depth, got {min_depth} and {max_depth}")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.protocol = protocol if protocol is not None else DepthProtocol(median_scaling=True, per_image=True)
        if not self.protocol.median_scaling:
            raise UserInputError(
                "self-supervised monocular depth is known up to scale only: evaluate it with "
                "tasks.depth_protocol.median_scaling=true"
            )
        self.higher_is_better = dict(DEPTH_HIGHER_IS_BETTER)

    @classmethod
    def from_config(cls, cfg: Any, info: Any) -> "DisparityTask":
        return cls(cfg.sde.min_depth, cfg.sde.max_depth, cfg.tasks.depth_protocol)

    @property
    def target_name(self) -> str:
        return "depth"

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        raise UserInputError(
            "the disparity task has no supervised loss: it is trained by the photometric loss of the sde scenario"
        )

    def decoding_rule(self) -> str:
        near, far = 1 / self.min_depth, 1 / self.max_depth
        return f"sigmoid disparity s: depth = 1 / ({far:g} + ({near:g} - {far:g}) * s), up to scale"

    def decode(self, pred_raw: Tensor) -> Tensor:
        """(B, 1, h, w) metres of a sigmoid disparity (B, 1, h, w), within [min_depth, max_depth]."""
        self.check_raw(pred_raw)
        return disp_to_depth(pred_raw, self.min_depth, self.max_depth)[1]

    def visualise_pair(self, decoded: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Each in its own range (the prediction is known up to scale only)."""
        return self.visualise(decoded), self.visualise_target(batch)

    def discriminator_input(self, pred_raw: Tensor, context: Any) -> Tensor:
        """The sigmoid disparity itself (B, 1, H, W), already in [0, 1]."""
        return pred_raw

