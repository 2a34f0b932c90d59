"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018).

With w_i the task weights, g_i the gradient of task i's loss w.r.t. the shared parameters (or the ``norm_params``
subset: the paper's last shared layer), G_i = w_i ||g_i||, the relative inverse training rate
r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0)), and the target G*_i = mean_j(G_j) * r_i^alpha held constant,
the weights take one gradient step on the gradient-norm loss sum_i |G_i - G*_i|:

    w_i <- w_i - lr * sign(G_i - G*_i) * ||g_i||,

then are clamped to stay positive and renormalised to sum to T. The step's shared gradient is sum_i w_i g_i with
the weights before the update; L_i(0) are the global losses of the first step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlda.weighting.base import SCALE_OPTION, Weighting, WeightingError, number, text

# Weights are clamped to this before the renormalisation, so a large step cannot make one zero or negative.
MIN_WEIGHT = 1e-6


class GradNorm(Weighting):
    """Gradient-level (use ``weighted_backward``). Options: ``alpha`` (>= 0, default 1.5), ``lr`` (> 0, default
    0.025: the weights' own plain gradient step), ``norm_params`` (comma-separated name prefixes of the shared
    parameters whose gradient norms are balanced; default empty: all shared parameters; needs the shared parameters
    passed to ``weighted_backward`` by name).

    State (buffers): ``task_weights`` (T,), ``initial_losses`` (T,), ``steps``.
    """

    name: ClassVar[str] = "gradnorm"
    level: ClassVar[str] = "gradient"
    cost: ClassVar[str] = "T backward passes + T gradient norms over the shared (or norm_params) parameters"
    option_specs = {
        **SCALE_OPTION,
        "alpha": number(1.5, minimum=0.0),
        "lr": number(0.025, minimum=0.0, exclusive=True),
        "norm_params": text(""),
    }

    def __init__(self, tasks: Sequence[str], fixed_weights: Mapping[str, float], **options: Any) -> None:
        super().__init__(tasks, fixed_weights, **options)
        self.prefixes = tuple(p.strip() for p in self.options["norm_params"].split(",") if p.strip())
        self.register_buffer("task_weights", torch.ones(self.num_tasks, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.ones(self.num_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("norm_index", torch.zeros(0, dtype=torch.int64), persistent=False)
        self._bound_names: tuple[str, ...] | None = None

    def bind_shared_parameters(self, names: Sequence[str], numels: Sequence[int]) -> None:
        if not self.prefixes or tuple(names) == self._bound_names:
            return
        pieces, offset = [], 0
        for name, numel in zip(names, numels):
            if any(name.startswith(prefix) for prefix in self.prefixes):
                pieces.append(torch.arange(offset, offset + numel))
            offset += numel
        if not pieces:
            raise WeightingError(
                f"gradnorm option norm_params={self.options['norm_params']!r} matches no shared parameter; "
                f"use name prefixes such as {list(names)[:3]}"
            )
        self.norm_index = torch.cat(pieces).to(self.norm_index.device)
        self._bound_names = tuple(names)

    def _combine_gradients(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        if self.prefixes and self._bound_names is None:
            raise WeightingError(
                f"gradnorm option norm_params={self.options['norm_params']!r} needs the shared parameters' names: "
                "pass weighted_backward a mapping name -> parameter (or call bind_shared_parameters first)"
            )
        losses = losses.to(self.initial_losses)
        if int(self.steps) == 0:
            self.initial_losses.copy_(losses.clamp_min(torch.finfo(losses.dtype).tiny))
        used = self.task_weights.clone()
        shared = used.to(grads) @ grads
        selected = grads[:, self.norm_index.to(grads.device)] if self.prefixes else grads
        norms = torch.linalg.vector_norm(selected, dim=1).to(used)
        self._update(norms, losses)
        return shared, used

    def _update(self, norms: Tensor, losses: Tensor) -> None:
        """One step on the gradient-norm loss from (T,) norms ||g_i|| and (T,) losses, then the renormalisation."""
        scaled_norms = self.task_weights * norms
        ratios = losses / self.initial_losses
        target = scaled_norms.mean() * (ratios / ratios.mean()) ** self.options["alpha"]
        step = torch.sign(scaled_norms - target) * norms
        updated = (self.task_weights - self.options["lr"] * step).clamp_min(MIN_WEIGHT)
        self.task_weights.copy_(self.num_tasks * updated / updated.sum())
        self.steps += 1

    def _current_weights(self) -> Tensor:
        return self.task_weights
