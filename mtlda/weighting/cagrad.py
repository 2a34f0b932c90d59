"""CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone and Liu, NeurIPS 2021).

With g_0 the average gradient and the ball ||d - g_0|| <= c ||g_0||, CAGrad takes the d in the ball that maximises
the worst task's improvement min_i g_i . d. Its dual is a problem over the simplex,

    w* = argmin_w  g_w . g_0 + c ||g_0|| ||g_w||,   g_w = sum_i w_i g_i,

solved exactly here (in float64, from the T x T Gram matrix, by enumerating the simplex's faces), and
d = g_0 + (c ||g_0|| / ||g_w*||) g_w*; every task with w*_i > 0 then improves by the same, worst, g_i . d.
c = 0 gives the average gradient (1/T of the sum). Task-specific parameters keep their own task's gradient
(weight 1), as in the paper, where only the shared parameters' update is changed.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import torch
from torch import Tensor

from mtlda.weighting.base import SCALE_OPTION, Weighting, number

# Added to the Gram matrix's diagonal (relative to the mean squared gradient norm) so that every face's system is
# invertible, also for duplicate or zero gradients.
RIDGE = 1e-12


def _face_minimiser(gram: Tensor, mixed: Tensor, radius: float) -> Tensor | None:
    """The stationary point of the dual restricted to the affine hull of a face (sum w = 1), or None if there is
    none. Stationarity b + radius A w / ||g_w|| = mu 1 gives w = (mu u - v) / (mu p - q) with u = A^-1 1,
    v = A^-1 b, p = 1.u, q = 1.v, and ||g_w|| = radius / (mu p - q) gives mu^2 p - 2 mu q + b.v = radius^2."""
    ones = torch.ones_like(mixed)
    u, v = torch.linalg.solve(gram, torch.stack([ones, mixed], dim=1)).unbind(1)
    p, q, r = float(ones @ u), float(ones @ v), float(mixed @ v)
    discriminant = q * q - p * (r - radius * radius)
    if p <= 0.0 or discriminant < 0.0:
        return None
    mu = (q + math.sqrt(discriminant)) / p
    denominator = mu * p - q
    if denominator <= 0.0:
        return None
    return (mu * u - v) / denominator


def cagrad_coefficients(gram: Tensor, c: float) -> Tensor:
    """(T,) coefficients a with d = sum_i a_i g_i, from the (T, T) Gram matrix g_i . g_j and the radius ``c``.

    The dual min_w b.w + radius ||g_w|| over the simplex (b = G g_0, radius = c ||g_0||) is solved exactly by
    enumerating the simplex's 2^T - 1 faces: the minimiser is the stationary point, inside its face, of smallest
    objective among those with w >= 0.
    """
    gram = gram.double().cpu()
    size = gram.shape[0]
    uniform = torch.full((size,), 1.0 / size, dtype=torch.float64)
    scale = float(gram.diagonal().mean())
    if scale <= 0.0 or c == 0.0:
        return uniform
    gram = gram / scale + RIDGE * torch.eye(size, dtype=torch.float64)
    mixed = gram @ uniform
    radius = c * math.sqrt(max(float(uniform @ mixed), 0.0))
    best, best_value = uniform, math.inf
    for count in range(1, size + 1):
        for face in itertools.combinations(range(size), count):
            index = torch.tensor(face)
            local = _face_minimiser(gram[index][:, index], mixed[index], radius)
            if local is None or float(local.min()) < -1e-12:
                continue
            w = torch.zeros(size, dtype=torch.float64)
            w[index] = local.clamp_min(0.0) / local.clamp_min(0.0).sum()
            value = float(w @ mixed) + radius * math.sqrt(max(float(w @ gram @ w), 0.0))
            if value < best_value:
                best, best_value = w, value
    norm = math.sqrt(max(float(best @ gram @ best), 0.0))
    if norm == 0.0:
        return uniform
    return uniform + (radius / norm) * best


class CAGrad(Weighting):
    """Gradient-level (use ``weighted_backward``). Options: ``c`` (>= 0, default 0.4), the ball's radius relative to
    the average gradient's norm. Stateless."""

    name: ClassVar[str] = "cagrad"
    level: ClassVar[str] = "gradient"
    cost: ClassVar[str] = "T backward passes + a T x T Gram matrix and 2^T - 1 tiny linear solves on the CPU"
    option_specs = {**SCALE_OPTION, "c": number(0.4, minimum=0.0)}

    def _combine_gradients(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        coefficients = cagrad_coefficients(grads @ grads.T, self.options["c"])
        return coefficients.to(grads) @ grads, torch.ones(self.num_tasks, dtype=torch.float64)

    def _current_weights(self) -> Tensor:
        return torch.ones(self.num_tasks, dtype=torch.float64)
