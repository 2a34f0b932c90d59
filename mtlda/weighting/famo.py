"""FAMO, fast adaptive multitask optimisation (Liu, Liu, Stone and Liu, NeurIPS 2023).

Logits xi (T,) give weights z = softmax(xi), applied to the log losses with the paper's normalisation:

    L = c * sum_i z_i log L_i,   c = 1 / sum_i (z_i / L_i)   (z and c held constant),

so the gradient is sum_i (c z_i / L_i) grad L_i, whose effective weights c z_i / L_i sum to 1. After each step the
logits follow the decrease of the log losses, delta_i = log L_i(prev) - log L_i(now):

    xi <- xi - lr * (J_z(xi)^T delta + decay * xi),   J_z^T delta = z * (delta - z . delta).

The paper measures delta across one update on the same batch (an extra forward pass); here it is measured between
the global losses of consecutive steps (consecutive batches), so each logit update lags the step it scores by one
step and costs nothing. Losses are clamped to ``MIN_LOSS`` before the log. Under DDP, c and the log act on each
rank's own batch losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlda.weighting.base import SCALE_OPTION, Weighting, number

MIN_LOSS = 1e-8


class FAMO(Weighting):
    """Loss-level; needs ``after_step`` once per optimiser step. Options: ``lr`` (> 0, default 0.025), ``decay``
    (>= 0, default 1e-3) of the logits' own update.

    State (buffers): ``logits`` (T,), ``previous_log_losses`` (T,), ``has_previous``, ``last_weights`` (T,) the
    effective weights c z_i / L_i of the latest ``combine_losses``, for logging.
    """

    name: ClassVar[str] = "famo"
    level: ClassVar[str] = "loss"
    cost: ClassVar[str] = "one backward pass; an O(T) logit update after the step"
    option_specs = {
        **SCALE_OPTION,
        "lr": number(0.025, minimum=0.0, exclusive=True),
        "decay": number(1e-3, minimum=0.0),
    }

    def __init__(self, tasks: Sequence[str], fixed_weights: Mapping[str, float], **options: Any) -> None:
        super().__init__(tasks, fixed_weights, **options)
        self.register_buffer("logits", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("previous_log_losses", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("has_previous", torch.zeros((), dtype=torch.bool))
        self.register_buffer("last_weights", torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64))

    def _combine_losses(self, losses: Tensor) -> Tensor:
        clamped = losses.clamp_min(MIN_LOSS)
        z = torch.softmax(self.logits, dim=0).to(losses)
        normaliser = 1.0 / (z / clamped.detach()).sum()
        self.last_weights.copy_((normaliser * z / clamped.detach()).detach())
        return normaliser * (z * torch.log(clamped)).sum()

    def _observe(self, losses: Tensor) -> None:
        log_losses = torch.log(losses.to(self.logits).clamp_min(MIN_LOSS))
        if bool(self.has_previous):
            delta = self.previous_log_losses - log_losses
            z = torch.softmax(self.logits, dim=0)
            logit_gradient = z * (delta - z @ delta) + self.options["decay"] * self.logits
            self.logits -= self.options["lr"] * logit_gradient
        self.previous_log_losses.copy_(log_losses)
        self.has_previous.fill_(True)

    def _current_weights(self) -> Tensor:
        return self.last_weights
