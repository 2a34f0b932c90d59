"""Aggregate finished runs over seeds: one table of mean ± std per experiment (Markdown and CSV) and plots.

Runs (their results.json) with the same experiment name form one row; each row names its seeds. Runs evaluated
on different data sets or under different protocols are refused (their numbers are not comparable), and so is a
seed given twice for one experiment. Runs of one experiment whose config.yaml differ in anything but the seed,
workdir, device, threads and loader workers get one warning line per differing key on stderr.

± is the sample standard deviation over seeds (0 for one seed). Δ_MTL is the mean over seeds ± the combined
uncertainty sqrt(std over seeds² + mean over seeds of the run's standard error²), the run's standard error coming
from its single-task references' seeds. The Markdown output also has the per-class IoU table (semseg).

Plots (--plots DIR; default: the folder of --md, none without --md):
- curves.png: from each run's scalars.csv, the total and per-task training losses, then the validation metrics of
  the table's columns, one panel each, mean over seeds with a ± one std band; 480x320 pixels per panel, up to 3
  panels a row; only for the trainings' own results.json (not for eval-*.json files, whose numbers the
  trainings' curves do not show);
- iou.png (semseg): per-class IoU bars per experiment, mean ± std over seeds, 1200x500 pixels;
- confusion_<experiment>.png (semseg): the confusion matrix summed over seeds, row-normalised; square, 260 + 36
  pixels per class a side, at least 480.

CSV (--csv): name, seeds, task, metric, mean, std; the Δ_MTL row (task "all", metric "delta") has the combined
uncertainty as its std.

examples:
  mtlda results runs/toycity_sdn_mteb/s* runs/toycity_sdn_none/s*
  mtlda results runs/*/s* --md tables/results.md --csv tables/results.csv      # plots into tables/
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mtlda.config import deep_merge, to_dict
from mtlda.errors import UserInputError
from mtlda.files import write_text_atomic
from mtlda.report import columns, per_class_table, protocol_block, results_table
from mtlda.schema import ExperimentConfig

# Config keys that may differ between the seeds of one experiment without a warning (full keys, last key parts).
RUN_ONLY_KEYS = ("seed", "workdir", "device")
RUN_ONLY_LEAVES = ("threads", "workers")
REQUIRED_KEYS = ("name", "seed", "dataset", "results", "protocol")


@dataclass
class Run:
    """One finished run: its folder, its results payload and its resolved config (None without config.yaml)."""

    file: Path  # the results JSON read
    payload: dict[str, Any]
    config: dict[str, Any] | None

    @property
    def folder(self) -> Path:
        return self.file.parent

    @property
    def name(self) -> str:
        return self.payload["name"]

    @property
    def seed(self) -> int:
        return self.payload["seed"]


@dataclass
class Experiment:
    """The runs of one experiment aggregated over seeds."""

    runs: list[Run]
    mean: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]]
    delta: tuple[float, float] | None

    @property
    def seeds(self) -> list[int]:
        return sorted(run.seed for run in self.runs)

    @property
    def label(self) -> str:
        return f"{self.runs[0].name} (seeds {','.join(map(str, self.seeds))})"


def load_run(path: Path, stem: str) -> Run:
    """The run of a folder (its ``<stem>.json`` and ``config.yaml``) or of a results JSON file."""
    file = path / f"{stem}.json" if path.is_dir() else path
    if not file.is_file():
        raise UserInputError(f"{file} not found: pass run folders of finished runs (or their {stem}.json files)")
    try:
        payload = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{file} is not valid JSON ({err}): pass the results of a finished run") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise UserInputError(f"{file} is not a results file of mtlda (no {', '.join(missing)}): pass run folders "
                             "of finished runs")
    config_file = file.parent / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    return Run(file, payload, config)


def check_comparable(runs: Sequence[Run]) -> dict[str, str]:
    """The protocol of every task, after refusing runs of different data sets or protocols."""
    datasets = sorted({run.payload["dataset"] for run in runs})
    if len(datasets) > 1:
        raise UserInputError(f"runs come from different data sets / resolutions: {datasets}; aggregate each "
                             "data set separately")
    protocols: dict[str, str] = {}
    for run in runs:
        for task, text in run.payload["protocol"].items():
            if protocols.setdefault(task, text) != text:
                raise UserInputError(f"runs use different {task} protocols: {protocols[task]!r} vs {text!r} "
                                     f"({run.folder}); aggregate runs of one protocol")
    return protocols


def group_by_experiment(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Experiment name -> its runs, refusing a seed given twice for one experiment."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    for name, members in groups.items():
        by_seed: dict[int, list[Run]] = {}
        for run in members:
            by_seed.setdefault(run.seed, []).append(run)
        for seed, same in by_seed.items():
            if len(same) > 1:
                raise UserInputError(f"experiment {name} has seed {seed} more than once: "
                                     f"{', '.join(str(r.folder) for r in same)}; pass each seed's run once")
    return groups


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_run_only(key: str) -> bool:
    return key in RUN_ONLY_KEYS or key.rsplit(".", 1)[-1] in RUN_ONLY_LEAVES


def config_differences(name: str, runs: Sequence[Run]) -> list[str]:
    """One warning line per config key whose value differs between the runs of experiment ``name``. A key that a
    run's config.yaml lacks (the run predates the key) takes the schema's current default, as loading that config
    to resume or evaluate the run does."""
    lines = [f"warning: {name}: no config.yaml in {run.folder}, its config is not compared"
             for run in runs if run.config is None]
    defaults = to_dict(ExperimentConfig())
    flat = [(run.folder, flatten(deep_merge(defaults, dict(run.config)))) for run in runs if run.config is not None]
    keys = sorted({key for _, values in flat for key in values if not is_run_only(key)})
    for key in keys:
        folders_by_value: dict[str, list[str]] = {}
        for folder, values in flat:
            shown = json.dumps(values[key]) if key in values else "<absent>"
            folders_by_value.setdefault(shown, []).append(str(folder))
        if len(folders_by_value) > 1:
            parts = "; ".join(f"{value} in {', '.join(folders)}" for value, folders in folders_by_value.items())
            lines.append(f"warning: {name}: runs grouped as one experiment differ in {key}: {parts}")
    return lines


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def combined_delta(runs: Sequence[Run]) -> tuple[float, float] | None:
    """(mean Δ_MTL over seeds, sqrt(std over seeds² + mean of the runs' standard errors²)), None unless every run
    has a delta."""
    deltas = [run.payload.get("delta") for run in runs]
    if any(delta is None for delta in deltas):
        return None
    mean, spread = mean_and_std(deltas)
    errors = [run.payload.get("delta_se") or 0.0 for run in runs]
    return mean, math.sqrt(spread**2 + statistics.fmean(e**2 for e in errors))


def aggregate(runs: Sequence[Run]) -> Experiment:
    """Mean and std over seeds of every metric all runs report, and the combined Δ_MTL."""
    mean: dict[str, dict[str, float]] = {}
    std: dict[str, dict[str, float]] = {}
    first = runs[0].payload["results"]
    for task, metrics in first.items():
        mean[task], std[task] = {}, {}
        for key in metrics:
            values = [run.payload["results"].get(task, {}).get(key) for run in runs]
            if all(value is not None for value in values):
                mean[task][key], std[task][key] = mean_and_std(values)
    return Experiment(list(runs), mean, std, combined_delta(runs))


def class_names(experiments: Sequence[Experiment]) -> list[str]:
    """The semseg class names of the runs (their details, else their ``iou_<class>`` metrics), in order."""
    for experiment in experiments:
        for run in experiment.runs:
            names = run.payload.get("details", {}).get("semseg", {}).get("class_names")
            if names:
                return list(names)
    keys = [key for e in experiments for key in e.mean.get("semseg", {}) if key.startswith("iou_")]
    return [key[len("iou_"):] for key in dict.fromkeys(keys)]


def markdown(experiments: Sequence[Experiment], dataset: str, protocols: Mapping[str, str],
             classes: Sequence[str], plots: Sequence[str]) -> str:
    """The results table, the per-class IoU table (semseg), the protocol and the plots, in Markdown."""
    tasks = sorted({task for e in experiments for task in e.mean})
    rows = {e.label: e.mean for e in experiments}
    stds = {e.label: e.std for e in experiments}
    deltas = {e.label: e.delta for e in experiments}
    has_delta = any(delta is not None for delta in deltas.values())
    lines = [f"## {dataset}: mean ± std over seeds", "",
             results_table(rows, tasks, deltas if has_delta else None, stds), ""]
    semseg = {e.label: e.mean["semseg"] for e in experiments if "semseg" in e.mean}
    if semseg and classes:
        spread = {e.label: e.std["semseg"] for e in experiments if "semseg" in e.std}
        lines += ["Per-class IoU % (mean ± std over seeds):", "", per_class_table(semseg, classes, spread), ""]
    lines += ["Protocol:", protocol_block(protocols),
              "- ±: sample standard deviation over seeds (0 for one seed)"]
    if has_delta:
        lines.append("- Δ_MTL: mean over seeds ± sqrt(std over seeds² + mean over seeds of each run's standard "
                     "error²), each run's standard error from its single-task references' seeds")
    if plots:
        lines += ["", *(f"![{Path(plot).stem}]({plot})" for plot in plots)]
    return "\n".join(lines) + "\n"


def csv_text(experiments: Sequence[Experiment]) -> str:
    """name, seeds, task, metric, mean, std rows; the Δ_MTL row's std is its combined uncertainty."""
    rows = [["name", "seeds", "task", "metric", "mean", "std"]]
    for e in experiments:
        name, seeds = e.runs[0].name, " ".join(map(str, e.seeds))
        for task, values in e.mean.items():
            listed = [metric for t, metric, _, _ in columns([task]) if t == task and metric in values]
            for metric in listed + sorted(set(values) - set(listed)):
                rows.append([name, seeds, task, metric, values[metric], e.std[task][metric]])
        if e.delta is not None:
            rows.append([name, seeds, "all", "delta", *e.delta])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def file_name(experiment: str) -> str:
    """An experiment name usable in a file name (other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)


def curve_tags(logged: Sequence[str], tasks: Sequence[str]) -> list[str]:
    """The curves drawn: the total and each task's weighted training loss, then the validation metrics of the
    table's columns (every logged validation metric but per-class IoUs when none of those is logged)."""
    from mtlda.plots import default_curve_tags

    defaults = default_curve_tags(logged)
    train = [tag for tag in defaults if tag.startswith("train/")]
    val = [f"val/{task}/{metric}" for task, metric, _, _ in columns(tasks) if f"val/{task}/{metric}" in logged]
    return train + (val or [tag for tag in defaults if tag.startswith("val/")])


def write_plots(experiments: Sequence[Experiment], classes: Sequence[str], folder: Path,
                curves: bool = True) -> list[Path]:
    """curves.png (with ``curves``), iou.png and confusion_<experiment>.png (see the module doc) in ``folder``; the
    written paths."""
    from mtlda import plots
    from mtlda.runlog import SCALARS_NAME, read_scalars

    written = []
    scalars = {e.runs[0].name: [read_scalars(run.folder) for run in e.runs if (run.folder / SCALARS_NAME).is_file()]
               for e in experiments} if curves else {}
    scalars = {name: seeds for name, seeds in scalars.items() if any(seeds)}
    if scalars:
        tags = curve_tags([tag for seeds in scalars.values() for run in seeds for tag in run],
                          sorted({task for e in experiments for task in e.mean}))
        written.append(plots.training_curves(scalars, folder / "curves.png", tags=tags, band="std"))
    elif curves:
        print(f"note: no run has a {SCALARS_NAME}: curves.png not written", file=sys.stderr)
    with_semseg = [e for e in experiments if "semseg" in e.mean]
    if with_semseg and classes:
        iou = {e.runs[0].name: {c: e.mean["semseg"].get(f"iou_{c}", math.nan) for c in classes} for e in with_semseg}
        stds = {e.runs[0].name: {c: e.std["semseg"].get(f"iou_{c}", math.nan) for c in classes} for e in with_semseg}
        written.append(plots.per_class_iou_bars(iou, folder / "iou.png", stds))
    for e in with_semseg:
        matrices = [run.payload.get("details", {}).get("semseg", {}).get("confusion") for run in e.runs]
        if any(m is None for m in matrices) or len(classes) != len(matrices[0]):
            print(f"note: {e.runs[0].name}: not every run has a semseg confusion matrix of its {len(classes)} "
                  "classes: no confusion plot", file=sys.stderr)
            continue
        total = np.sum([np.asarray(m, dtype=np.float64) for m in matrices], axis=0)
        out = folder / f"confusion_{file_name(e.runs[0].name)}.png"
        written.append(plots.confusion_matrix_image(total, classes, out, normalise="true"))
    return written


def plot_links(paths: Sequence[Path], md: Path | None) -> list[str]:
    """The plots as Markdown image targets: relative to the Markdown file's folder when there is one."""
    if md is None:
        return [str(p) for p in paths]
    base = md.resolve().parent
    return [Path(p).resolve().relative_to(base).as_posix() if Path(p).resolve().is_relative_to(base) else str(p)
            for p in paths]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (or results JSON files)")
    p.add_argument("--stem", default="results",
                   help="file stem to read in run folders (default: results; e.g. eval-best)")
    p.add_argument("--md", type=Path, help="also write the Markdown tables here")
    p.add_argument("--csv", type=Path, help="also write a CSV with mean and std of every metric here")
    p.add_argument("--plots", type=Path, metavar="DIR",
                   help="write curves.png, iou.png and confusion_<experiment>.png here (default: the folder of --md)")
    return p


def refuse_outputs_in_runs(outputs: dict[str, Path | None], runs: Sequence[Run]) -> None:
    """Tables go beside the runs, never into one: a run folder's own files (results.json/md, config.yaml) are
    this command's inputs and training's outputs."""
    folders = {run.file.parent.resolve() for run in runs}
    for option, path in outputs.items():
        if path is not None and path.resolve().parent in folders:
            raise UserInputError(f"{option} {path} is inside a run folder this command reads; write the table "
                                 "elsewhere (e.g. docs/results/<name>.md)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    runs = [load_run(path, args.stem) for path in args.runs]
    refuse_outputs_in_runs({"--md": args.md, "--csv": args.csv}, runs)
    protocols = check_comparable(runs)
    groups = group_by_experiment(runs)
    for name, members in groups.items():
        for line in config_differences(name, members):
            print(line, file=sys.stderr)
    experiments = [aggregate(members) for members in groups.values()]
    classes = class_names(experiments)
    plot_dir = args.plots or (args.md.parent if args.md else None)
    training = all(run.file.name == "results.json" for run in runs)  # an evaluation's numbers are not on the curves
    written = write_plots(experiments, classes, plot_dir, curves=training) if plot_dir is not None else []
    text = markdown(experiments, runs[0].payload["dataset"], protocols, classes, plot_links(written, args.md))
    print(text)
    if args.md:
        write_text_atomic(args.md, text)
    if args.csv:
        write_text_atomic(args.csv, csv_text(experiments))
    return 0
