"""The contract between the training engine and a scenario: what a scenario supplies, what a step reports."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mtlda.errors import MtldaError
from mtlda.schema import OptimConfig

if TYPE_CHECKING:
    from mtlda.scenarios.engine import Engine


class TrainingError(MtldaError, RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message says what happened and what to try."""


@dataclass
class OptimizerSpec:
    """Parameter groups of one optimiser and its settings; ``clip`` applies ``settings.grad_clip``."""

    groups: Mapping[str, Sequence[nn.Parameter]]
    settings: OptimConfig
    clip: bool = True


@dataclass
class StepOutput:
    """What a training step reports: detached 0-dim terms to log and the main loss (moved to the host only when
    logged, so a step costs one host synchronisation: the finiteness check of ``loss``)."""

    terms: dict[str, Tensor]
    loss: Tensor


class Scenario:
    """What a scenario supplies to the :class:`Engine` (implemented by ``DenseScenario``)."""

    def modules(self) -> dict[str, nn.Module]:
        """Named modules saved in checkpoints (e.g. ``model``, ``discriminators``)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, OptimizerSpec]:
        raise NotImplementedError

    def train_batches(self, start_iteration: int) -> Iterator[Any]:
        """Training batches from iteration ``start_iteration`` on, in a seed-determined order."""
        raise NotImplementedError

    def train_step(self, batch: Any, engine: "Engine") -> StepOutput:
        """Forward and ``engine.backward(...)``; the engine clips and steps every optimiser afterwards."""
        raise NotImplementedError

    def validate(self, engine: "Engine") -> dict[str, float]:
        """Metrics on the validation split, named ``task/metric`` (plus ``delta`` for multi-task runs)."""
        raise NotImplementedError

    def selection(self) -> tuple[str, bool]:
        """(metric that selects ``best.pt``, whether higher is better), checked before training starts."""
        raise NotImplementedError

    def image_panels(self, engine: "Engine") -> dict[str, torch.Tensor]:
        """(3, H, W) float images for TensorBoard; empty by default."""
        return {}

    def wrap_for_distributed(self, engine: "Engine") -> None:
        """Prepare modules for several processes (called once when the world size is > 1)."""

    def synchronise_gradients(self, engine: "Engine") -> None:
        """Average over ranks the gradients that DDP does not (called after every backward, before clipping)."""

    def after_step(self, engine: "Engine") -> None:
        """Called after every optimiser step (e.g. to update adaptive task weights)."""

    def metadata(self) -> dict[str, Any]:
        """Task and class metadata stored in checkpoints."""
        return {}
