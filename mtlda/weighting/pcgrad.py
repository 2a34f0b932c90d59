"""PCGrad, projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman and Finn, NeurIPS 2020).

For every task i, starting from g_i^PC = g_i, and for every other task j in a random order: if g_i^PC . g_j < 0,
g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 g_j (projection onto the normal plane of the *original* g_j). The
shared gradient is sum_i g_i^PC; task-specific parameters keep their own task's gradient (weight 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlda.weighting.base import SCALE_OPTION, Weighting, integer


class PCGrad(Weighting):
    """Gradient-level (use ``weighted_backward``). Options: ``seed`` (>= 0, default 0) of the method's own
    generator, which draws the orders of the other tasks (one per task, every step).

    State (buffers): ``generator_state``, the CPU generator's state as a uint8 tensor, so a resumed run draws the
    same orders; it is identical on every DDP rank because every rank draws the same sequence.
    """

    name: ClassVar[str] = "pcgrad"
    level: ClassVar[str] = "gradient"
    cost: ClassVar[str] = "T backward passes + T(T-1) projections of (P,) vectors"
    option_specs = {**SCALE_OPTION, "seed": integer(0, 0)}

    def __init__(self, tasks: Sequence[str], fixed_weights: Mapping[str, float], **options: Any) -> None:
        super().__init__(tasks, fixed_weights, **options)
        generator = torch.Generator().manual_seed(self.options["seed"])
        self.register_buffer("generator_state", generator.get_state())

    def _draw_orders(self) -> list[list[int]]:
        """For each task i, the other tasks in a random order; advances ``generator_state``."""
        generator = torch.Generator()
        generator.set_state(self.generator_state.cpu())
        orders = []
        for i in range(self.num_tasks):
            others = [j for j in torch.randperm(self.num_tasks, generator=generator).tolist() if j != i]
            orders.append(others)
        self.generator_state.copy_(generator.get_state())
        return orders

    def _combine_gradients(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        tiny = torch.finfo(grads.dtype).tiny
        squared_norms = (grads * grads).sum(dim=1).clamp_min(tiny)
        projected = grads.clone()
        for i, others in enumerate(self._draw_orders()):
            for j in others:
                conflict = (projected[i] @ grads[j]).clamp(max=0.0)
                projected[i] -= (conflict / squared_norms[j]) * grads[j]
        return projected.sum(dim=0), torch.ones(self.num_tasks, dtype=torch.float64)

    def _current_weights(self) -> Tensor:
        return torch.ones(self.num_tasks, dtype=torch.float64)
