"""Results tables: Markdown rows of named runs and baselines, with the protocol each metric was measured under.

Columns come from each task's ``columns`` (looked up in the task registry by name, so tables of stored results
need no task objects); every metric of a column is printed with the same number of decimals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mtlda.tasks import TASKS

Results = Mapping[str, Mapping[str, float]]
# Decimals per metric kind: ratios (AbsRel) 3, metres and degrees 2, percentages 1.
DECIMALS = {"abs_rel": 3, "sq_rel": 3, "rmse_log": 3, "rmse": 2, "mean": 2, "median": 2}
PERCENT_DECIMALS = 1


def decimals(metric: str) -> int:
    return DECIMALS.get(metric, PERCENT_DECIMALS)


def format_value(value: float | None, digits: int, spread: float | None = None) -> str:
    if value is None or value != value:
        return "-"
    text = f"{value:.{digits}f}"
    return f"{text} ± {spread:.{digits}f}" if spread is not None else text


def columns(tasks: Sequence[str]) -> list[tuple[str, str, str, bool]]:
    """(task, metric, header label, higher is better) of every column of ``tasks``."""
    out = []
    for task in tasks:
        if task not in TASKS:
            continue
        out += [(task, metric, label, better) for metric, label, better in TASKS.get(task).columns]
    return out


def results_table(rows: Mapping[str, Results], tasks: Sequence[str],
                  deltas: Mapping[str, tuple[float, float] | float | None] | None = None,
                  stds: Mapping[str, Results] | None = None) -> str:
    """A Markdown table: one row per entry of ``rows`` (row -> task -> metric -> value); ``deltas`` row ->
    Delta_MTL % or (Delta_MTL %, its uncertainty); ``stds`` row -> task -> metric -> spread shown as ± s."""
    cols = columns(tasks)
    header = ["model"] + [f"{task} {label} {'↑' if better else '↓'}" for task, _, label, better in cols]
    if deltas is not None:
        header.append("Δ_MTL % ↑")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, results in rows.items():
        spread = (stds or {}).get(name, {})
        cells = [name] + [
            format_value(results.get(t, {}).get(m), decimals(m), spread.get(t, {}).get(m) if spread else None)
            for t, m, _, _ in cols
        ]
        if deltas is not None:
            delta = deltas.get(name)
            if isinstance(delta, tuple):
                cells.append(format_value(delta[0], 2, delta[1]))
            else:
                cells.append(format_value(delta, 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(rows: Mapping[str, Mapping[str, float]], class_names: Sequence[str],
                    stds: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """Per-class IoU (%) table: one row per model (row -> semseg metrics with ``iou_<class>`` entries)."""
    header = ["model"] + list(class_names)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in rows.items():
        spread = (stds or {}).get(name, {})
        cells = [name] + [format_value(metrics.get(f"iou_{c}"), PERCENT_DECIMALS, spread.get(f"iou_{c}") if spread
                                       else None) for c in class_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def protocol_block(protocols: Mapping[str, str]) -> str:
    """The protocol lines printed under every table."""
    return "\n".join(f"- {text}" for _, text in sorted(protocols.items()))
