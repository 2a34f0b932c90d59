"""The Task contract: everything task-specific (head size, target, loss, decoding, metric, visualisation,
discriminator input, trivial prior, report columns) lives on one Task class; scenarios, models, baselines and
reports never switch on a task's name.

Raw head outputs are (B, C, h, w) at any stride; losses and metrics resize them (bilinear, ``align_corners=False``)
to the target's resolution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlda.data.batch import Batch
from mtlda.data.targets import SCALAR_MAP, TargetKind
from mtlda.errors import UserInputError
from mtlda.metrics import StreamingMetric
from mtlda.resize import resize_to
from mtlda.visualise import grey_to_rgb


class Task(ABC):
    """A dense prediction task.

    Class attributes: ``name`` (the key of predictions, targets and results), ``code`` (the letter of
    ``tasks.names``; empty for tasks not selectable there), ``target_kind`` (a :class:`~mtlda.data.targets.TargetKind`:
    how the data layer resizes, pads and flips the target; None for a task scored against another task's target),
    ``main_metric`` (the metric of the
    multi-task delta and of the trivial-baseline comparison) and ``columns`` ((metric, label, higher is better)
    shown in results tables). Instances set ``out_channels`` and ``higher_is_better`` (metric -> True when larger is
    better), and ``class_names`` when the task predicts classes (its results then have ``iou_<class>`` entries).
    """

    name: ClassVar[str]
    code: ClassVar[str] = ""
    target_kind: ClassVar[TargetKind | None] = SCALAR_MAP
    main_metric: ClassVar[str]
    columns: ClassVar[tuple[tuple[str, str, bool], ...]] = ()
    out_channels: int
    higher_is_better: dict[str, bool]
    class_names: list[str] | tuple[str, ...] = ()

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Any, info: Any) -> "Task":
        """The task of an :class:`~mtlda.schema.ExperimentConfig` on a data set (``DatasetInfo``)."""

    # ---------------------------------------------------------------------------------------------- targets
    @property
    def target_name(self) -> str:
        """The batch target this task is scored against (its own name unless a subclass says otherwise)."""
        return self.name

    def target(self, batch: Batch) -> Tensor:
        if self.target_name not in batch.targets:
            raise UserInputError(
                f"the batch has no {self.target_name!r} target (targets: {sorted(batch.targets)}); load the data "
                f"with the {self.target_name} task"
            )
        return batch.targets[self.target_name]

    def mask(self, batch: Batch) -> Tensor:
        """(B, 1, H, W) bool validity of this task's target; all True when the batch carries no mask."""
        target = self.target(batch)
        mask = batch.masks.get(self.target_name)
        if mask is None:
            return torch.ones((target.shape[0], 1, *target.shape[-2:]), dtype=torch.bool, device=target.device)
        return mask.bool()

    def check_raw(self, pred_raw: Tensor) -> None:
        if pred_raw.ndim != 4 or pred_raw.shape[1] != self.out_channels:
            raise ValueError(
                f"{self.name} head output must have shape (B, {self.out_channels}, h, w), got {tuple(pred_raw.shape)}"
            )

    # --------------------------------------------------------------------------------- learning, decoding
    @abstractmethod
    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        """Scalar loss of the raw head output (B, C, h, w) against the batch's target."""

    @abstractmethod
    def decode(self, pred_raw: Tensor) -> Tensor:
        """Physical prediction of the raw head output (same resolution)."""

    def decoding_rule(self) -> str:
        """How to turn the raw head output into the physical prediction outside mtlda (export descriptions)."""
        return f"raw head output; see {type(self).__name__}.decode() in mtlda.tasks"

    def output_map(self, decoded: Tensor) -> Tensor:
        """The user-facing form of one decoded (1, C, H, W) prediction: (H, W) for one channel, else (C, H, W)."""
        return decoded[0, 0] if decoded.shape[1] == 1 else decoded[0]

    # ------------------------------------------------------------------------------------------- metrics
    @abstractmethod
    def new_metric(self) -> StreamingMetric:
        """A fresh streaming metric that takes ``decode`` outputs."""

    def score(self, metric: StreamingMetric, decoded: Tensor, batch: Batch) -> None:
        """Add a batch of decoded predictions to ``metric`` (``metric.update(pred, target, mask)``)."""
        metric.update(decoded, self.target(batch), self.mask(batch))

    def protocol_description(self) -> str:
        """The protocol description of this task's metric (part of every results table and reference key)."""
        return self.new_metric().protocol_description()

    # ------------------------------------------------------------------------------------- visualisation
    @abstractmethod
    def visualise(self, decoded: Tensor) -> Tensor:
        """(B, 3, h, w) float image in [0, 1] of a decoded prediction."""

    @abstractmethod
    def visualise_target(self, batch: Batch) -> Tensor:
        """(B, 3, H, W) float image in [0, 1] of the batch's target."""

    def legend(self) -> tuple[list[str], Any] | None:
        """(names, (C, 3) uint8 palette) of a colour legend for image panels (None: no legend)."""
        return None

    def visualise_pair(self, decoded: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """(prediction, target) images drawn so that they compare (e.g. one depth colour range per row)."""
        return self.visualise(decoded), self.visualise_target(batch)

    # ------------------------------------------------------------------------------- domain adaptation
    def discriminator_context(self, source: Batch) -> Any:
        """What :meth:`discriminator_input` needs from the labelled source batch (None by default)."""
        return None

    def discriminator_input(self, pred_raw: Tensor, context: Any) -> Tensor:
        """The map this task's patch discriminator reads, from a raw head output (B, C, H, W)."""
        raise UserInputError(f"task {self.name!r} defines no discriminator input: it cannot be adapted (uda)")

    def visualise_discriminator_input(self, values: Tensor) -> Tensor:
        """(B, 3, H, W) picture of a :meth:`discriminator_input` map: a one-channel map in [0, 1] grey (clipped);
        tasks with other maps override this."""
        if values.shape[1] != 1:
            raise NotImplementedError(f"task {self.name!r}: override visualise_discriminator_input for its "
                                      f"{values.shape[1]}-channel discriminator input")
        return grey_to_rgb(values.clamp(0, 1))

    # ----------------------------------------------------------------------------------- trivial priors
    def prior_terms(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(value (B, C, H, W) float, weight (B, 1 or C, H, W) float): what the mean-target priors average."""
        weight = self.mask(batch).float()
        return self.target(batch).float() * weight, weight

    def prior_prediction(self, mean: Tensor) -> Tensor:
        """The decoded prediction (1, C, H, W) of a mean target (global or per pixel)."""
        return mean.contiguous()

    def resize_prior(self, pred: Tensor, size: tuple[int, int]) -> Tensor:
        """A prior prediction (1, C, h, w) at the evaluation resolution ``size``."""
        return resize_to(pred, size)
