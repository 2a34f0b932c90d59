"""Nash-MTL, multi-task learning as a bargaining game (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik and
Fetaya, ICML 2022).

The update is d = sum_i alpha_i g_i with alpha > 0 the Nash bargaining solution

    (G^T G) alpha = 1 / alpha   (elementwise),

where G = [g_1 ... g_T]. It is the unique minimiser of the strictly convex phi(alpha) = 1/2 alpha^T G^T G alpha -
sum_i log alpha_i, found here by damped Newton steps (a backtracking line search that keeps alpha > 0) in float64
on the Gram matrix normalised to a unit mean diagonal; alpha is rescaled back exactly (alpha -> alpha / sqrt(k) for
G^T G / k). A tiny ridge keeps the solution finite when the gradients are (nearly) Pareto-stationary. Orthogonal
gradients give alpha_i = 1 / ||g_i||, and ||d||^2 = alpha^T G^T G alpha = T always. Task-specific parameters are
weighted by alpha too (the paper backpropagates sum_i alpha_i L_i).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlda.weighting.base import Weighting

# Added to the normalised Gram matrix's diagonal (relative to the mean squared gradient norm).
RIDGE = 1e-10
# Newton stops when every |alpha_i (G^T G alpha)_i - 1| is below this.
RESIDUAL_TOLERANCE = 1e-12
MAX_NEWTON_STEPS = 100


def nash_bargaining_weights(gram: Tensor) -> Tensor:
    """(T,) alpha > 0 solving gram @ alpha = 1 / alpha for a (T, T) Gram matrix; ones if every gradient is 0."""
    gram = gram.double().cpu()
    size = gram.shape[0]
    scale = float(gram.diagonal().mean())
    if scale <= 0.0:
        return torch.ones(size, dtype=torch.float64)
    gram = gram / scale + RIDGE * torch.eye(size, dtype=torch.float64)

    def potential(alpha: Tensor) -> float:
        return float(0.5 * alpha @ gram @ alpha - torch.log(alpha).sum())

    alpha = 1.0 / gram.diagonal().sqrt()
    for _ in range(MAX_NEWTON_STEPS):
        g_alpha = gram @ alpha
        if float((alpha * g_alpha - 1.0).abs().max()) < RESIDUAL_TOLERANCE:
            break
        grad = g_alpha - 1.0 / alpha
        newton = -torch.linalg.solve(gram + torch.diag(1.0 / alpha**2), grad)
        shrinking = newton < 0
        t = min(1.0, 0.99 * float((-alpha[shrinking] / newton[shrinking]).min())) if shrinking.any() else 1.0
        current, slope = potential(alpha), float(grad @ newton)
        while t > 1e-12 and potential(alpha + t * newton) > current + 1e-4 * t * slope:
            t *= 0.5
        alpha = alpha + t * newton
    return alpha / math.sqrt(scale)


class NashMTL(Weighting):
    """Gradient-level (use ``weighted_backward``). No options: the solution is invariant to rescaling a task's
    gradient (g_i -> k g_i gives alpha_i -> alpha_i / k and the same d), so fixed weights would change nothing.
    Stateless apart from ``last_weights`` (T,), the latest alpha, for logging."""

    name: ClassVar[str] = "nashmtl"
    level: ClassVar[str] = "gradient"
    cost: ClassVar[str] = "T backward passes + a T x T Gram matrix and a T-dimensional Newton solve on the CPU"

    def __init__(self, tasks: Sequence[str], fixed_weights: Mapping[str, float], **options: Any) -> None:
        super().__init__(tasks, fixed_weights, **options)
        self.register_buffer("last_weights", torch.ones(self.num_tasks, dtype=torch.float64))

    def _combine_gradients(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        alpha = nash_bargaining_weights(grads @ grads.T)
        self.last_weights.copy_(alpha)
        return alpha.to(grads) @ grads, alpha

    def _current_weights(self) -> Tensor:
        return self.last_weights
