"""Static task weights: L = sum_t w_t L_t with the experiment's fixed weights (the paper's task balancing)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlda.weighting.base import Weighting


class FixedWeighting(Weighting):
    """The weighted sum of the task losses with ``fixed_weights``; no options, no state."""

    name: ClassVar[str] = "fixed"
    level: ClassVar[str] = "loss"
    cost: ClassVar[str] = "one backward pass of the weighted sum"

    def _scales_by_fixed_weights(self) -> bool:
        return True

    def _combine_losses(self, losses: Tensor) -> Tensor:
        return losses.sum()

    def _current_weights(self) -> Tensor:
        return torch.ones(self.num_tasks, dtype=torch.float64)
