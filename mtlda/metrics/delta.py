"""The multi-task delta of Vandenhende et al. (the paper's Delta_T, Sec. 4.1) and its uncertainty."""

from __future__ import annotations

import math
from collections.abc import Mapping

from mtlda.errors import UserInputError

Results = Mapping[str, Mapping[str, float]]


def _terms(metrics: Results, references: Results, higher_is_better: Mapping[str, Mapping[str, bool]]):
    """Yield (task, metric, sign, value, reference, number of metrics of the task) for every delta term."""
    if not higher_is_better:
        raise ValueError("multitask_delta needs at least one task")
    for task in sorted(higher_is_better):
        chosen = higher_is_better[task]
        if not chosen:
            raise ValueError(f"no delta metrics chosen for task {task!r}")
        if task not in metrics:
            raise ValueError(f"no metrics for task {task!r}; got tasks {sorted(metrics)}")
        if task not in references:
            raise UserInputError(
                f"no single-task reference for task {task!r}; train and record the single-task experiment "
                "(--record-reference)"
            )
        for name in sorted(chosen):
            value, ref = metrics[task].get(name), references[task].get(name)
            if value is None or ref is None:
                where = "metrics" if value is None else "references"
                raise ValueError(f"metric {task}/{name} is missing from the {where}")
            if not (math.isfinite(value) and math.isfinite(ref)) or ref == 0:
                raise ValueError(f"cannot form a relative difference for {task}/{name}: value {value}, reference {ref}")
            yield task, name, (1.0 if chosen[name] else -1.0), value, ref, len(chosen)


def multitask_delta(metrics: Results, references: Results, higher_is_better: Mapping[str, Mapping[str, bool]]) -> float:
    """Delta (%) = 100 * mean over tasks t of mean over its metrics m of (-1)^l (M_m - R_m) / R_m, l = 1 when lower
    is better. ``metrics`` and ``references`` map task -> metric -> value; the paper uses one metric per task."""
    terms = list(_terms(metrics, references, higher_is_better))
    tasks = len(higher_is_better)
    return 100 * sum(sign * (value - ref) / ref / count for _, _, sign, value, ref, count in terms) / tasks


def delta_uncertainty(metrics: Results, references: Results, reference_errors: Results,
                      higher_is_better: Mapping[str, Mapping[str, bool]]) -> float:
    """Standard error (%) of :func:`multitask_delta` due to the references' standard errors (first-order
    propagation: dDelta/dR_m = -100 sign M_m / (T |m_t| R_m^2)); a missing error counts as 0."""
    terms = list(_terms(metrics, references, higher_is_better))
    tasks = len(higher_is_better)
    variance = 0.0
    for task, name, sign, value, ref, count in terms:
        error = float(reference_errors.get(task, {}).get(name, 0.0) or 0.0)
        variance += (100 * sign * value / (tasks * count * ref**2) * error) ** 2
    return math.sqrt(variance)
