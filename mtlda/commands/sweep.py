"""Train a grid of config overrides over seeds, resumably, into one results table (the paper's Table 7 procedure).

Every cell of the grid (the Cartesian product of the --grid values) is trained once per seed by the experiment's own
command (mtlda train, uda or sde) in a child process, in its own run folder <out>/<cell>/s<seed>, where <cell> names
the cell's overrides (e.g. D=10_N=1) and the run's experiment name is <name>__<cell>. Runs go one after another, or
one per GPU at a time when several are visible (each child then sees one GPU through CUDA_VISIBLE_DEVICES). Each
child writes its output to sweep.log in its run folder. A run whose results.json exists is skipped and one with a
last.pt continues with --resume, so running the same command again continues an interrupted sweep.

At the end, <out>/sweep.md holds the results over seeds (mean ± std per cell, the results machinery of mtlda results)
and the cells ranked by --metric with the best one marked; <out>/sweep.csv and <out>/sweep.json hold the same.

Task weights: tasks.weights is by task code (S, D, N, E) and must give every task of the experiment; a cell that sets
some tasks.weights.<code> gets the experiment's own weights (given or the paper's defaults) for the other codes.

examples:
  mtlda sweep experiments/supervised/toycity/sdn_mteb.yaml --grid tasks.weights.D=1,10,50 \\
      --grid tasks.weights.N=1,10 --seeds 0,1
  mtlda sweep experiments/supervised/toycity/sd_mteb.yaml --grid optim.lr.backbone=1e-4,5e-4 --metric semseg/miou
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from mtlda.cli import find_config
from mtlda.commands.results import (
    Experiment,
    aggregate,
    check_comparable,
    class_names,
    csv_text,
    file_name,
    group_by_experiment,
    load_run,
    markdown,
)
from mtlda.config import load_config
from mtlda.errors import Interrupted, UserInputError
from mtlda.files import write_text_atomic
from mtlda.report import columns, decimals, format_value
from mtlda.scenarios.resume_check import config_changes
from mtlda.scenarios.runner import without_pretrained
from mtlda.schema import ExperimentConfig
from mtlda.tasks import DisparityTask, default_weights, task_codes, task_weights
from mtlda.weights.targets import experiment_scenario

# The command that trains each scenario's experiments.
SCENARIO_COMMANDS = {"supervised": "train", "uda": "uda", "sde": "sde"}
WEIGHT_KEY = "tasks.weights."
LOG_NAME = "sweep.log"


@dataclass(frozen=True)
class Axis:
    """One --grid option: a config key and the values it takes (YAML text, as --set reads it)."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its overrides (``key=value``), completed ones included, and its folder name."""

    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    """One seed of one cell: its run folder and what is left to do there (start, resume or nothing)."""

    cell: Cell
    seed: int
    folder: Path

    @property
    def state(self) -> str:
        if (self.folder / "results.json").is_file():
            return "done"
        return "resume" if (self.folder / "last.pt").is_file() else "start"


def split_values(text: str) -> list[str]:
    """``"1,10,[S,D]"`` -> ``["1", "10", "[S,D]"]``: split at commas outside brackets and braces."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_axis(text: str) -> Axis:
    """``"tasks.weights.D=1,10,50"`` -> Axis("tasks.weights.D", ("1", "10", "50"))."""
    key, sep, raw = text.partition("=")
    values = split_values(raw) if sep else []
    if not key.strip() or not values or not all(values):
        raise UserInputError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. --grid tasks.weights.D=1,10,50")
    if len(set(values)) != len(values):
        raise UserInputError(f"--grid {text!r}: a value is given twice")
    return Axis(key.strip(), tuple(values))


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserInputError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise UserInputError(f"--seeds {text!r}: a seed is given twice")
    return seeds


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends with (``tasks.weights.D`` -> ``D``)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            suffix = ".".join(parts[-size:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        out[key] = suffix
    return out


def completed_weights(cfg: ExperimentConfig, overrides: Sequence[str]) -> list[str]:
    """The ``tasks.weights.<code>=w`` overrides for the codes of ``cfg`` (the experiment without the grid's weights)
    that ``overrides`` leave out, when they set any task weight: ``cfg``'s own weight, else the paper's default."""
    given = {o.partition("=")[0][len(WEIGHT_KEY):] for o in overrides if o.startswith(WEIGHT_KEY)}
    if not given:
        return []
    codes = list(cfg.tasks.names)
    unknown = sorted(given - set(codes))
    if unknown:
        raise UserInputError(f"--grid tasks.weights.{unknown[0]}: {unknown[0]} is not a task of the experiment "
                             f"(tasks.names {codes})")
    names, defaults = task_codes(), default_weights(codes)
    base = {**{code: defaults[names[code]] for code in codes}, **cfg.tasks.weights}
    return [f"{WEIGHT_KEY}{code}={base[code]:g}" for code in codes if code not in given]


def grid_cells(experiment: Path, fixed: Sequence[str], axes: Sequence[Axis]) -> list[Cell]:
    """Every cell of the grid, its config checked (unknown keys, bad values, incomplete task weights, the names of
    registered blocks, architectures and weightings)."""
    keys = [axis.key for axis in axes]
    if len(set(keys)) != len(keys):
        raise UserInputError(f"--grid: a key is given twice ({', '.join(keys)}); give each key's values once")
    short = short_keys(keys)
    cells = []
    for values in itertools.product(*(axis.values for axis in axes)):
        grid = [f"{key}={value}" for key, value in zip(keys, values)]
        cfg = load_config(experiment, [*fixed, *(o for o in grid if not o.startswith(WEIGHT_KEY))])
        overrides = [*grid, *completed_weights(cfg, grid)]
        resolved = load_config(experiment, [*fixed, *overrides])
        task_weights(resolved.tasks)
        # The cell's modules on the meta device (no data, no weights read): an unknown block, architecture or
        # weighting is refused here, not after the cells before it have trained.
        experiment_scenario(without_pretrained(resolved), "meta")
        named = "_".join(f"{short[key]}={value}" for key, value in zip(keys, values))
        label = re.sub(r"[^A-Za-z0-9._=+-]+", "_", named)
        cells.append(Cell(label, tuple(overrides)))
    return cells


def child_command(experiment: Path, command: str, fixed: Sequence[str], name: str, run: Run) -> list[str]:
    """The child process's command line: the scenario's command on the experiment with the cell's overrides."""
    sets = [*fixed, *run.cell.overrides, f"name={name}__{run.cell.label}"]
    return [sys.executable, "-m", "mtlda", command, "--config", str(experiment),
            *(arg for o in sets for arg in ("--set", o)), "--seed", str(run.seed), "--workdir", str(run.folder),
            *(["--resume"] if run.state == "resume" else [])]


def refuse_stale_runs(experiment: Path, fixed: Sequence[str], name: str, runs: Sequence[Run]) -> None:
    """UserInputError when a run folder of the sweep holds a run of another configuration (the experiment file or
    the --set values changed since): it would be counted (or resumed) as this cell's."""
    for run in runs:
        stored_file = run.folder / "config.yaml"
        if run.state == "start" or not stored_file.is_file():
            continue
        wanted = load_config(experiment, [*fixed, *run.cell.overrides, f"name={name}__{run.cell.label}",
                                          f"seed={run.seed}"])
        changed = config_changes(yaml.safe_load(stored_file.read_text()) or {}, wanted)  # what --resume refuses
        if changed:
            shown = "; ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in list(changed.items())[:3])
            raise UserInputError(f"{run.folder} holds a run of another configuration ({shown}"
                                 f"{'; ...' if len(changed) > 3 else ''}): delete it, or give this sweep another --out")


def gpu_slots(cfg: ExperimentConfig) -> list[str | None]:
    """One slot per visible GPU when there are several and the experiment may use them (a child runs in each, with
    CUDA_VISIBLE_DEVICES set to it); else one slot that keeps the environment (runs one after another)."""
    if cfg.device == "cpu":
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    else:
        import torch

        gpus = [str(index) for index in range(torch.cuda.device_count())]
    return list(gpus) if len(gpus) > 1 else [None]


Launcher = Callable[[Run, str | None], subprocess.Popen]


def run_all(runs: Sequence[Run], slots: Sequence[str | None], launch: Launcher,
            poll_s: float = 0.5) -> list[tuple[Run, int]]:
    """Run every run, at most one per slot at a time; returns the (run, exit code) of those that failed. On Ctrl-C
    the children (which got the signal too) are waited for, so that each has saved its last.pt."""
    pending, active, failed = list(runs), {}, []
    try:
        while pending or active:
            for slot in slots:
                if slot not in active and pending:
                    run = pending.pop(0)
                    active[slot] = (run, launch(run, slot), time.monotonic())
            for slot, (run, process, started) in list(active.items()):
                code = process.poll()
                if code is None:
                    continue
                del active[slot]
                took = f"{time.monotonic() - started:.0f} s"
                print(f"{'finished' if code == 0 else f'FAILED (exit code {code})'}: {run.folder} ({took})",
                      file=sys.stderr)
                if code:
                    failed.append((run, code))
            time.sleep(poll_s if active else 0)
    except KeyboardInterrupt:
        for _, process, _ in active.values():
            process.wait()
        raise Interrupted("sweep interrupted: run the same command again to continue (finished runs are skipped, "
                          "interrupted ones resume from their last.pt)") from None
    return failed


def launcher(experiment: Path, command: str, fixed: Sequence[str], name: str) -> Launcher:
    """Start a run's child process, its output appended to <run folder>/sweep.log."""

    def launch(run: Run, slot: str | None) -> subprocess.Popen:
        run.folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": slot} if slot is not None else {}))
        args = child_command(experiment, command, fixed, name, run)
        where = f" on GPU {slot}" if slot is not None else ""
        print(f"{run.state}{where}: {run.folder} (log: {run.folder / LOG_NAME})", file=sys.stderr)
        with open(run.folder / LOG_NAME, "a") as log:
            log.write(f"$ {' '.join(args)}\n")
            log.flush()
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    return launch


# --------------------------------------------------------------------------------------------------- the table
def metric_direction(metric: str, tasks: Sequence[str]) -> bool:
    """Whether higher is better for ``metric`` (``delta`` or ``task/metric`` of a column of ``tasks``)."""
    if metric == "delta":
        if len(tasks) < 2:
            raise UserInputError("--metric delta needs a multi-task experiment: name a task metric, e.g. "
                                 f"--metric {columns(tasks)[0][0]}/{columns(tasks)[0][1]}")
        return True
    known = {f"{task}/{name}": better for task, name, _, better in columns(tasks)}
    if metric not in known:
        raise UserInputError(f"--metric {metric!r}: use delta or one of {', '.join(known)}")
    return known[metric]


def experiment_tasks(cfg: ExperimentConfig) -> list[str]:
    """The task names an experiment's runs report (SDE: its supervised tasks and the self-supervised disparity)."""
    codes = task_codes()
    pretrain = cfg.scenario == "sde" and cfg.sde.stage == "pretrain"
    supervised = [] if pretrain else [codes[code] for code in cfg.tasks.names]
    return sorted(supervised + ([DisparityTask.name] if cfg.scenario == "sde" else []))


def default_metric(tasks: Sequence[str]) -> str:
    """``delta`` for a multi-task experiment, else its task's first column (e.g. ``semseg/miou``)."""
    task, metric, _, _ = columns(tasks)[0]
    return "delta" if len(tasks) > 1 else f"{task}/{metric}"


def score(experiment: Experiment, metric: str) -> tuple[float, float] | None:
    """(mean, std over seeds) of ``metric`` for one cell, None when its runs do not report it."""
    if metric == "delta":
        return experiment.delta
    task, _, name = metric.partition("/")
    if name not in experiment.mean.get(task, {}):
        return None
    return experiment.mean[task][name], experiment.std[task][name]


def ranking(cells: Mapping[str, Experiment], metric: str, higher: bool) -> tuple[list[tuple[str, tuple]], str]:
    """Cells with a score, best first, and the ranking's Markdown table (the best marked)."""
    scored = [(label, s) for label, e in cells.items() if (s := score(e, metric)) is not None]
    scored.sort(key=lambda item: item[1][0], reverse=higher)
    lines = [f"Cells ranked by {metric} ({'higher' if higher else 'lower'} is better; mean ± std over seeds):", "",
             f"| cell | seeds | {metric} | |", "|---|---|---:|---|"]
    for rank, (label, (mean, spread)) in enumerate(scored):
        seeds = ",".join(map(str, cells[label].seeds))
        value = format_value(mean, decimals(metric.rpartition("/")[2]), spread)
        lines.append(f"| {label} | {seeds} | {value} | {'**best**' if rank == 0 else ''} |")
    return scored, "\n".join(lines)


def write_table(out: Path, cells: Sequence[Cell], runs: Sequence[Run], metric: str, tasks: Sequence[str]) -> dict:
    """sweep.md, sweep.csv and sweep.json from the finished runs; returns the JSON payload."""
    finished = [run for run in runs if run.state == "done"]
    loaded = [load_run(run.folder, "results") for run in finished]
    protocols = check_comparable(loaded)
    groups = group_by_experiment(loaded)
    label_of = {loaded_run.name: run.cell.label for run, loaded_run in zip(finished, loaded)}
    experiments = {label_of[name]: aggregate(members) for name, members in groups.items()}
    notes = []
    if metric == "delta" and not any(e.delta for e in experiments.values()):
        first = columns(tasks)[0]
        metric = f"{first[0]}/{first[1]}"
        notes.append(f"note: the runs have no Δ_MTL (no single-task references recorded for this setting; train "
                     f"them with --record-reference): cells ranked by {metric} instead")
    higher = metric_direction(metric, tasks)
    scored, rank_table = ranking(experiments, metric, higher)
    ordered = list(experiments.values())
    text = markdown(ordered, loaded[0].payload["dataset"], protocols, class_names(ordered), [])
    text += "\n" + "\n".join(notes + [rank_table]) + "\n"
    write_text_atomic(out / "sweep.md", text)
    write_text_atomic(out / "sweep.csv", csv_text(ordered))
    payload = {"metric": metric, "higher_is_better": higher, "best": scored[0][0] if scored else None,
               "cells": [{"cell": cell.label, "overrides": list(cell.overrides),
                          "runs": [str(r.folder) for r in runs if r.cell == cell and r.state == "done"],
                          "score": score(experiments[cell.label], metric) if cell.label in experiments else None}
                         for cell in cells]}
    write_text_atomic(out / "sweep.json", json.dumps(payload, indent=2))
    print(text)
    return payload


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtlda sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="experiment YAML file (e.g. experiments/supervised/toycity/sdn_mteb.yaml)")
    p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                   help="a config key and its values (repeatable: the grid is the product of all)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of every cell (default: 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of every run (repeatable)")
    p.add_argument("--out", type=Path, help="sweep folder (default: runs/sweeps/<experiment name>)")
    p.add_argument("--metric", help="what ranks the cells: delta (Δ_MTL) or task/metric, e.g. semseg/miou (default: "
                                    "delta for multi-task experiments, else the task's main metric)")
    p.add_argument("--dry-run", action="store_true", help="print every run's state and command, run nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    experiment = find_config(args.experiment)
    base = load_config(experiment, args.overrides)
    if base.scenario not in SCENARIO_COMMANDS:
        raise UserInputError(f"scenario {base.scenario!r} of {experiment} has no training command")
    tasks = experiment_tasks(base)
    metric = args.metric or default_metric(tasks)
    metric_direction(metric, tasks)
    cells = grid_cells(experiment, args.overrides, [parse_axis(text) for text in args.grid])
    out = args.out or Path("runs") / "sweeps" / file_name(base.name)
    runs = [Run(cell, seed, out / cell.label / f"s{seed}") for cell in cells for seed in parse_seeds(args.seeds)]
    command = SCENARIO_COMMANDS[base.scenario]
    refuse_stale_runs(experiment, args.overrides, base.name, runs)
    if args.dry_run:
        for run in runs:
            print(f"{run.state}: {' '.join(child_command(experiment, command, args.overrides, base.name, run))}")
        return 0
    todo = [run for run in runs if run.state != "done"]
    print(f"sweep {out}: {len(cells)} cells x {len(runs) // len(cells)} seeds, {len(runs) - len(todo)} runs done, "
          f"{len(todo)} to run", file=sys.stderr)
    failed = run_all(todo, gpu_slots(base), launcher(experiment, command, args.overrides, base.name))
    if any(run.state == "done" for run in runs):
        write_table(out, cells, runs, metric, tasks)
    for run, code in failed:
        print(f"error: {run.folder} failed with exit code {code}; see {run.folder / LOG_NAME}, then run the same "
              "command again", file=sys.stderr)
    return 1 if failed else 0
