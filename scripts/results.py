#!/usr/bin/env python
"""Aggregate finished runs (their results.json) over seeds into one table, mean ± std, in Markdown and CSV.

Runs with the same experiment name form one row. Runs evaluated under different protocols or data sets are
refused (their numbers are not comparable).

examples:
  python scripts/results.py runs/toycity_sdn_mteb/s* runs/toycity_sdn_none/s*
  python scripts/results.py runs/*/s* --md table.md --csv table.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from mtlda.cli import run_main
from mtlda.report import COLUMNS, protocol_block, results_table


def load_run(path: Path, stem: str) -> dict:
    file = path / f"{stem}.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: pass run folders of finished runs (or their {stem}.json files)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err})") from None


def aggregate(runs: list[dict]) -> tuple[dict, dict, dict, dict, dict]:
    """name -> mean results, name -> std results, name -> mean delta, name -> seeds, protocols."""
    groups: dict[str, list[dict]] = {}
    protocols: dict[str, str] = {}
    datasets = {r["dataset"] for r in runs}
    if len(datasets) > 1:
        raise ValueError(f"runs come from different data sets / resolutions: {sorted(datasets)}")
    for run in runs:
        for task, text in run["protocol"].items():
            if protocols.setdefault(task, text) != text:
                raise ValueError(f"runs use different {task} protocols: {protocols[task]!r} vs {text!r}")
        groups.setdefault(run["name"], []).append(run)
    means, stds, deltas, seeds = {}, {}, {}, {}
    for name, members in groups.items():
        means[name], stds[name] = {}, {}
        for task in members[0]["results"]:
            keys = [k for k in members[0]["results"][task] if all(k in m["results"].get(task, {}) for m in members)]
            values = {k: [m["results"][task][k] for m in members] for k in keys}
            means[name][task] = {k: statistics.fmean(v) for k, v in values.items()}
            stds[name][task] = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()}
        ds = [m["delta"] for m in members if m.get("delta") is not None]
        deltas[name] = statistics.fmean(ds) if len(ds) == len(members) else None
        seeds[name] = sorted(m["seed"] for m in members)
    return means, stds, deltas, seeds, protocols


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or results JSON files)")
    parser.add_argument("--stem", default="results", help="file stem to read in run folders (default: results)")
    parser.add_argument("--md", type=Path, help="also write the Markdown table here")
    parser.add_argument("--csv", type=Path, help="also write a CSV with mean and std of every metric here")
    args = parser.parse_args()
    runs = [load_run(p, args.stem) for p in args.runs]
    means, stds, deltas, seeds, protocols = aggregate(runs)
    tasks = sorted({t for r in means.values() for t in r})
    rows = {f"{name} (seeds {','.join(map(str, seeds[name]))})": means[name] for name in means}
    spread = {f"{name} (seeds {','.join(map(str, seeds[name]))})": stds[name] for name in stds}
    row_deltas = {f"{name} (seeds {','.join(map(str, seeds[name]))})": deltas[name] for name in deltas}
    text = (f"## {runs[0]['dataset']}: mean ± std over seeds\n\n"
            + results_table(rows, tasks, row_deltas if any(v is not None for v in deltas.values()) else None, spread)
            + "\n\nProtocol:\n" + protocol_block(protocols) + "\n")
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "seeds", "task", "metric", "mean", "std"])
            for name in means:
                for task, values in means[name].items():
                    shown = [k for k, _, _ in COLUMNS.get(task, [])] + sorted(set(values) - {k for k, _, _ in COLUMNS.get(task, [])})
                    for key in shown:
                        if key in values:
                            writer.writerow([name, " ".join(map(str, seeds[name])), task, key, values[key], stds[name][task][key]])
                if deltas[name] is not None:
                    writer.writerow([name, " ".join(map(str, seeds[name])), "all", "delta", deltas[name], ""])
    return 0


if __name__ == "__main__":
    run_main(main)
