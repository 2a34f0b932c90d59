"""Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

Each task has a learnable log-variance s_t and the loss is

    L = sum_t exp(-s_t) L_t + s_t,

one form for every task, *without* the 1/2 factor of the paper's Gaussian (regression) derivation. The dense losses
here (cross-entropy, berHu, cosine, weighted BCE) are not Gaussian or Boltzmann likelihoods, so the factor has no
exact justification for any of them, and the uniform form gives every task the same fixed point: for constant L_t
the optimum is s_t = log L_t, i.e. an effective weight exp(-s_t) = 1 / L_t.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlda.weighting.base import SCALE_OPTION, Weighting, number


class UncertaintyWeighting(Weighting):
    """Learnable log-variances ``log_variances`` (T,), which must be given to an optimiser (without weight decay)
    and, under DDP, have their gradients all-reduced (``all_reduce_mean_``) like the model's.

    Options: ``init_log_variance`` (starting s_t, default 0: weights 1).
    """

    name: ClassVar[str] = "uncertainty"
    level: ClassVar[str] = "loss"
    cost: ClassVar[str] = "one backward pass; T learnable log-variances in the optimiser"
    option_specs = {**SCALE_OPTION, "init_log_variance": number(0.0)}

    def __init__(self, tasks: Sequence[str], fixed_weights: Mapping[str, float], **options: Any) -> None:
        super().__init__(tasks, fixed_weights, **options)
        init = torch.full((self.num_tasks,), self.options["init_log_variance"])
        self.log_variances = nn.Parameter(init)

    def _combine_losses(self, losses: Tensor) -> Tensor:
        s = self.log_variances.to(losses.dtype)
        return (torch.exp(-s) * losses + s).sum()

    def _current_weights(self) -> Tensor:
        return torch.exp(-self.log_variances)
