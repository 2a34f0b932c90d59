"""Results tables: Markdown rows of named runs and baselines, with the protocol each metric was measured under."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Metrics shown per task (all are computed and stored; these are the table's columns), with their direction.
COLUMNS: dict[str, list[tuple[str, str, bool]]] = {
    "semseg": [("miou", "mIoU %", True), ("pixel_acc", "pix.acc %", True)],
    "depth": [("abs_rel", "AbsRel", False), ("rmse", "RMSE m", False), ("delta1", "d<1.25 %", True)],
    "normals": [("mean", "mean err deg", False), ("median", "median err deg", False),
                ("within_11.25", "<11.25 %", True)],
    "edges": [("ods_f", "ODS-F %", True), ("f1", "F1@0.5 %", True)],
    "disp": [("abs_rel", "AbsRel", False), ("rmse", "RMSE m", False), ("delta1", "d<1.25 %", True)],
}

Results = Mapping[str, Mapping[str, float]]


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None or value != value:
        return "-"
    digits = 3 if abs(value) < 10 else 1
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def results_table(rows: Mapping[str, Results], tasks: Sequence[str], deltas: Mapping[str, float | None] | None = None,
                  stds: Mapping[str, Results] | None = None) -> str:
    """A Markdown table: one row per entry of ``rows`` (row -> task -> metric -> value)."""
    header = ["model"]
    keys = []
    for task in tasks:
        for key, label, better in COLUMNS.get(task, []):
            header.append(f"{task} {label} {'↑' if better else '↓'}")
            keys.append((task, key))
    if deltas is not None:
        header.append("Δ_MTL % ↑")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, results in rows.items():
        spread = (stds or {}).get(name, {})
        cells = [name] + [
            _fmt(results.get(t, {}).get(k), spread.get(t, {}).get(k) if spread else None) for t, k in keys
        ]
        if deltas is not None:
            cells.append(_fmt(deltas.get(name)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def protocol_block(protocols: Mapping[str, str]) -> str:
    """The protocol lines printed under every table."""
    return "\n".join(f"- {text}" for _, text in sorted(protocols.items()))
