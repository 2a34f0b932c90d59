"""What the scenario scripts share: experiment selection, set-up, training, evaluation and the results report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from mtlda.baselines import evaluate_priors, fit_priors
from mtlda.cli import resolve_config
from mtlda.config import load_config
from mtlda.data.registry import build_dataset
from mtlda.report import protocol_block, results_table
from mtlda.scenarios.checkpoint import load_checkpoint
from mtlda.scenarios.common import describe_model, loader_tasks
from mtlda.scenarios.distributed import DistInfo, init_distributed, resolve_device
from mtlda.scenarios.engine import Engine, Scenario
from mtlda.schema import ExperimentConfig

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
DATASETS = ("toycity", "cityscapes", "synthia", "vkitti2", "nyudv2")
ScenarioFactory = Callable[[ExperimentConfig, Engine, bool], Scenario]


def experiment_stem(codes: str, block: str, suffix: str = "") -> str:
    """``<codes>_<block><suffix>`` (``<code>_stl<suffix>`` for one task), e.g. ``sdn_mteb``, ``s_stl``."""
    codes = codes.replace(",", "").lower()
    return (f"{codes}_stl" if len(codes) == 1 else f"{codes}_{block}") + suffix


def experiment_file(scenario: str, dataset: str, stem: str) -> Path:
    """``experiments/<scenario>/<dataset>/<stem>.yaml``, or an error listing the ones that exist."""
    path = EXPERIMENTS / scenario / dataset / f"{stem}.yaml"
    if not path.is_file():
        folder = path.parent
        have = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise FileNotFoundError(
            f"no experiment {path.relative_to(EXPERIMENTS.parent)}; available for {dataset}: "
            f"{', '.join(have) or 'none'} (or pass --config FILE)"
        )
    return path


def config_from_args(args: argparse.Namespace, scenario: str, default_codes: str, default_block: str,
                     extra: Sequence[str] = ()) -> ExperimentConfig:
    """The run's config: ``--config`` or the experiment picked by --dataset/--tasks/--block, then --set."""
    overrides = list(extra)
    if args.config is None:
        stem = experiment_stem(args.tasks or default_codes, args.block or default_block)
        args.config = str(experiment_file(scenario, args.dataset or "toycity", stem))
    else:
        if args.dataset:
            overrides.append(f"data.dataset={args.dataset}")
        if args.tasks:
            overrides.append(f"tasks.names=[{', '.join(args.tasks.replace(',', ''))}]")
        if args.block:
            overrides.append(f"model.block={args.block}")
    return resolve_config(args, overrides)


def add_selection_options(parser: argparse.ArgumentParser, default_codes: str, default_block: str) -> None:
    parser.add_argument("--dataset", choices=DATASETS, help="data set (default: toycity, built in)")
    parser.add_argument("--tasks", help=f"task codes among S,D,N,E, e.g. S,D (default: {default_codes})")
    parser.add_argument("--block", choices=("mteb", "padnet", "none"),
                        help=f"exchange block (default: {default_block}; one task: single-task baseline)")


def set_up(cfg: ExperimentConfig) -> tuple[DistInfo, torch.device]:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.device, DistInfo())
    info = init_distributed(device.type)
    return info, resolve_device(cfg.device, info)


def train(cfg: ExperimentConfig, factory: ScenarioFactory, resume: bool) -> tuple[Engine, Scenario, dict]:
    info, device = set_up(cfg)
    engine = Engine(cfg, Path(cfg.workdir), device, dist=info)
    scenario = factory(cfg, engine, True)
    if engine.is_main:
        print(f"run folder: {cfg.workdir}\n{describe_model(_model_of(scenario))}", file=sys.stderr)
    try:
        metrics = engine.fit(scenario, resume=resume)
    finally:
        engine.close()
    return engine, scenario, metrics


def evaluate_checkpoint(cfg: ExperimentConfig, factory: ScenarioFactory, checkpoint: str) -> tuple[Engine, Scenario]:
    info, device = set_up(cfg)
    engine = Engine(cfg, Path(cfg.workdir), device, dist=info, show_progress=False)
    scenario = factory(cfg, engine, False)
    engine.scenario = scenario
    engine.load_modules(load_checkpoint(checkpoint, device), ["model"])
    return engine, scenario


def evaluate_and_report(cfg: ExperimentConfig, factory: ScenarioFactory, checkpoint: str) -> dict:
    """``--evaluate CKPT``: metrics of the checkpoint on the validation split, printed and stored beside the run
    as ``eval-<checkpoint name>.md/json`` (the training's own results files are left alone)."""
    engine, scenario = evaluate_checkpoint(cfg, factory, checkpoint)
    results = scenario.evaluate_tasks(engine)
    if engine.is_main:
        report(cfg, scenario, results, f"{cfg.name} ({checkpoint})", with_baselines=False,
               stem=f"eval-{Path(checkpoint).stem}")
    return results


def train_and_report(cfg: ExperimentConfig, factory: ScenarioFactory, resume: bool, split_name: str = "val") -> dict:
    """Train (or continue) a run, record a single-task run as the delta's reference, print the results table."""
    engine, scenario, _ = train(cfg, factory, resume=resume)
    if engine.is_main:
        if len(scenario.tasks) == 1 and next(iter(scenario.tasks.values())).code:
            scenario.references.record(scenario.last_results)
        report(cfg, scenario, scenario.last_results,
               f"{cfg.name} (final, iteration {engine.iteration}, {split_name})")
    return scenario.last_results


def checkpoint_config(path: str, overrides: Sequence[str]) -> ExperimentConfig:
    """The config a checkpoint was trained with, with ``overrides`` applied."""
    return load_config(None, overrides, stored=load_checkpoint(path)["config"])


def _model_of(scenario: Scenario) -> torch.nn.Module:
    return scenario.modules()["model"]


def baseline_rows(cfg: ExperimentConfig, scenario) -> dict[str, dict]:
    """Metrics of the trivial baselines (global constants, per-pixel prior) on the validation split."""
    plain = build_dataset(cfg.data, cfg.data.train_split, train=False, tasks=loader_tasks(scenario.tasks))
    priors = fit_priors(plain, scenario.tasks, scenario.splits.info.num_classes)
    results = evaluate_priors(priors, scenario.tasks, scenario.splits.val)
    return {f"trivial: {kind}": res for kind, res in results.items()}


def report(cfg: ExperimentConfig, scenario, results: dict[str, dict[str, float]], title: str,
           with_baselines: bool = True, stem: str = "results", extra_rows: dict[str, dict] | None = None,
           notes: Sequence[str] = ()) -> str:
    """Print and store (``<stem>.md`` and ``<stem>.json`` in the run folder) the results table of a run:
    trivial baselines, single-task references (multi-task runs), ``extra_rows``, then ``results``."""
    rows: dict[str, dict] = {}
    if with_baselines:
        rows.update(baseline_rows(cfg, scenario))
    multi = scenario.references.multitask
    refs = scenario.references.references() if multi else {}
    if refs:
        rows["single-task references"] = refs
    rows.update(extra_rows or {})
    rows[title] = results
    deltas = {title: scenario.references.delta(results)} if multi else None
    if deltas is not None and all(t in refs for t in scenario.tasks):
        deltas["single-task references"] = 0.0
    tasks = list(scenario.tasks)
    protocols = scenario.references.protocol
    text = (
        f"## {cfg.name}: {scenario.references.dataset}, validation split '{cfg.data.val_split}'\n\n"
        + results_table(rows, tasks, deltas)
        + "\n\nProtocol:\n"
        + protocol_block(protocols)
        + ("\n- Δ_MTL: paper's multi-task delta vs the single-task references above (main metric per task)"
           if multi and refs else "")
        + ("" if not multi or refs else "\n- Δ_MTL not shown: no single-task references recorded for this data "
           f"set in {cfg.references} (train each task alone with --tasks X to record them)")
        + "".join(f"\n- {note}" for note in notes)
        + "\n"
    )
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{stem}.md").write_text(text)
    payload = {"name": cfg.name, "seed": cfg.seed, "dataset": scenario.references.dataset, "results": results,
               "delta": deltas.get(title) if deltas else None, "protocol": protocols,
               "other_rows": {k: v for k, v in rows.items() if k != title}}
    (workdir / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    print(text)
    return text
