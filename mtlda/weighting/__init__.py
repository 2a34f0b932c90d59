"""Multi-task loss balancing: the methods, their registry and the gradient plumbing.

Loss-level methods (``combine_losses``): fixed, uncertainty, dwa, famo. Gradient-level methods
(``weighted_backward`` -> ``combine_gradients``): gradnorm, pcgrad, cagrad, nashmtl. Every method takes
``after_step`` once per optimiser step (a no-op for most).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtlda.weighting.base import Option, Weighting, WeightingError, closest_hint
from mtlda.weighting.cagrad import CAGrad
from mtlda.weighting.dwa import DynamicWeightAverage
from mtlda.weighting.famo import FAMO
from mtlda.weighting.fixed import FixedWeighting
from mtlda.weighting.gradients import (
    NonFiniteGradientError,
    all_reduce_mean_,
    assign_flat_gradient,
    flat_task_gradients,
    rank_mean_losses,
    weighted_backward,
)
from mtlda.weighting.gradnorm import GradNorm
from mtlda.weighting.nashmtl import NashMTL
from mtlda.weighting.pcgrad import PCGrad
from mtlda.weighting.uncertainty import UncertaintyWeighting

WEIGHTINGS: dict[str, type[Weighting]] = {
    cls.name: cls
    for cls in (
        FixedWeighting,
        UncertaintyWeighting,
        DynamicWeightAverage,
        GradNorm,
        PCGrad,
        CAGrad,
        NashMTL,
        FAMO,
    )
}


def build_weighting(
    name: str, tasks: Sequence[str], fixed_weights: Mapping[str, float], options: Mapping[str, Any] | None = None
) -> Weighting:
    """The method ``name`` for ``tasks`` with ``options`` (plain values from YAML); ``WeightingError`` naming the
    valid names or options when one is unknown or a value does not fit."""
    if name not in WEIGHTINGS:
        raise WeightingError(
            f"unknown weighting {name!r}{closest_hint(str(name), list(WEIGHTINGS))}; "
            f"choose one of {', '.join(WEIGHTINGS)}"
        )
    options = dict(options or {})
    bad_keys = [k for k in options if not isinstance(k, str)]
    if bad_keys:
        raise WeightingError(f"weighting {name!r}: option names must be strings, got {bad_keys}")
    return WEIGHTINGS[name](tasks, fixed_weights, **options)


__all__ = [
    "WEIGHTINGS",
    "CAGrad",
    "DynamicWeightAverage",
    "FAMO",
    "FixedWeighting",
    "GradNorm",
    "NashMTL",
    "NonFiniteGradientError",
    "Option",
    "PCGrad",
    "UncertaintyWeighting",
    "Weighting",
    "WeightingError",
    "all_reduce_mean_",
    "assign_flat_gradient",
    "build_weighting",
    "flat_task_gradients",
    "rank_mean_losses",
    "weighted_backward",
]
