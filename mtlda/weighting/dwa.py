"""Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019).

With r_t = L_t(k-1) / L_t(k-2) the ratio of a task's last two recorded losses,

    w_t = T * softmax(r_t / temperature),

and w_t = 1 until two losses have been recorded. The paper records one mean loss per epoch; here a record is the
mean of the global losses over ``period`` optimiser steps (default 1: every iteration), so the epoch variant is
``period = iterations per epoch``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlda.weighting.base import SCALE_OPTION, Weighting, integer, number


class DynamicWeightAverage(Weighting):
    """Loss-level; needs ``after_step`` once per optimiser step. Options: ``temperature`` (> 0, default 2 as in the
    paper), ``period`` (steps per record, >= 1, default 1).

    State (buffers): ``history`` (2, T) the last two records (row 0 the latest), ``records`` how many were made,
    ``period_sum`` (T,) and ``period_steps`` the running sum of the current period.
    """

    name: ClassVar[str] = "dwa"
    level: ClassVar[str] = "loss"
    cost: ClassVar[str] = "one backward pass; a softmax over T loss ratios"
    option_specs = {**SCALE_OPTION, "temperature": number(2.0, minimum=0.0, exclusive=True), "period": integer(1, 1)}

    def __init__(self, tasks: Sequence[str], fixed_weights: Mapping[str, float], **options: Any) -> None:
        super().__init__(tasks, fixed_weights, **options)
        self.register_buffer("history", torch.ones(2, self.num_tasks, dtype=torch.float64))
        self.register_buffer("records", torch.zeros((), dtype=torch.int64))
        self.register_buffer("period_sum", torch.zeros(self.num_tasks, dtype=torch.float64))
        self.register_buffer("period_steps", torch.zeros((), dtype=torch.int64))

    def _combine_losses(self, losses: Tensor) -> Tensor:
        return (self._current_weights().to(losses) * losses).sum()

    def _observe(self, losses: Tensor) -> None:
        self.period_sum += losses.to(self.period_sum)
        self.period_steps += 1
        if int(self.period_steps) == self.options["period"]:
            self.history[1] = self.history[0]
            self.history[0] = self.period_sum / self.options["period"]
            self.records += 1
            self.period_sum.zero_()
            self.period_steps.zero_()

    def _current_weights(self) -> Tensor:
        if int(self.records) < 2:
            return torch.ones_like(self.period_sum)
        ratios = self.history[0] / self.history[1].clamp_min(torch.finfo(self.history.dtype).tiny)
        return self.num_tasks * torch.softmax(ratios / self.options["temperature"], dim=0)
