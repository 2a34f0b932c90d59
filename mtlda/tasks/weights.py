"""Fixed task-balancing weights: the paper's per task set (Sec. 4.1, "Task balancing") or the experiment's own."""

from __future__ import annotations

from collections.abc import Sequence

from mtlda.errors import UserInputError
from mtlda.schema import TasksConfig
from mtlda.tasks.registry import check_codes, task_codes

# The paper's weights per task set, keyed by sorted codes.
PAPER_WEIGHTS = {
    ("D", "S"): {"S": 50.0, "D": 1.0},
    ("D", "N", "S"): {"S": 100.0, "D": 1.0, "N": 100.0},
    ("D", "E", "N", "S"): {"S": 100.0, "D": 1.0, "N": 100.0, "E": 50.0},
}


def default_weights(codes: Sequence[str]) -> dict[str, float]:
    """The paper's loss weights by task name: S-D 50/1, S-D-N 100/1/100, S-D-N-E 100/1/100/50; any other task set
    (one task, or sets the paper did not study) 1 for every task."""
    check_codes(codes)
    names = task_codes()
    by_code = PAPER_WEIGHTS.get(tuple(sorted(codes)), {c: 1.0 for c in codes})
    return {names[c]: by_code[c] for c in sorted(codes, key=lambda c: names[c])}


def task_weights(cfg: TasksConfig) -> dict[str, float]:
    """Loss weights by task name: ``cfg.weights`` (by code) when given, else :func:`default_weights`."""
    if not cfg.weights:
        return default_weights(cfg.names)
    check_codes(cfg.names)
    missing = sorted(set(cfg.names) - set(cfg.weights))
    extra = sorted(set(cfg.weights) - set(cfg.names))
    if missing or extra:
        raise UserInputError(
            f"tasks.weights must give one weight per task code {sorted(cfg.names)}; "
            f"missing {missing}, unexpected {extra}"
        )
    names = task_codes()
    return {names[c]: float(cfg.weights[c]) for c in sorted(cfg.names, key=lambda c: names[c])}
