"""Running an experiment: set-up, training, evaluation of a checkpoint, recording references and the report."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mtlda.adabn import recalibrate_batchnorm
from mtlda.baselines import evaluate_priors, fit_priors
from mtlda.config import load_config
from mtlda.data.registry import build_dataset
from mtlda.depth_by_class import labelled_validation_split, report_depth_by_class
from mtlda.distributed import DistInfo, init_distributed, resolve_device, shutdown_distributed
from mtlda.files import write_text_atomic
from mtlda.models.network import format_parameter_counts
from mtlda.references import refuse_unless_reference
from mtlda.report import per_class_table, protocol_block, results_table
from mtlda.scenarios.checkpoint import isolated_rng, load_checkpoint
from mtlda.scenarios.dense import DenseScenario, target_names
from mtlda.scenarios.engine import Engine, unwrap
from mtlda.scenarios.registry import scenario_class
from mtlda.schema import ExperimentConfig


def set_up(cfg: ExperimentConfig) -> tuple[DistInfo, torch.device]:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.device, DistInfo())
    info = init_distributed(device.type)
    return info, resolve_device(cfg.device, info)


def build_scenario(cfg: ExperimentConfig, train: bool, show_progress: bool = True,
                   scenario_type: type[DenseScenario] | None = None) -> tuple[Engine, DenseScenario]:
    """Engine and scenario of ``cfg`` (the registered class of ``cfg.scenario`` unless ``scenario_type``)."""
    info, device = set_up(cfg)
    engine = Engine(cfg, Path(cfg.workdir), device, dist=info, show_progress=show_progress)
    scenario = (scenario_type or scenario_class(cfg.scenario))(cfg, engine, train)
    return engine, scenario


def train(cfg: ExperimentConfig, resume: bool = False, allow_changed: Sequence[str] = (),
          scenario_type: type[DenseScenario] | None = None) -> tuple[Engine, DenseScenario, dict]:
    """Train (or continue) the run of ``cfg``."""
    engine, scenario = build_scenario(cfg, train=True, scenario_type=scenario_type)
    try:
        if engine.is_main:
            counts = format_parameter_counts(unwrap(scenario.model).parameter_counts())
            print(f"run folder: {cfg.workdir}\n{counts}", file=sys.stderr)
        metrics = engine.fit(scenario, resume=resume, allow_changed=allow_changed)
    finally:
        engine.close()
    return engine, scenario, metrics


def without_pretrained(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``model.pretrained: none``: for a network whose weights all come from a checkpoint (no
    ImageNet file is read or downloaded only to be overwritten)."""
    return replace(cfg, model=replace(cfg.model, pretrained="none"))


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint: str) -> tuple[Engine, DenseScenario]:
    """The scenario of ``cfg`` (validation split only) with the checkpoint's network weights."""
    engine, scenario = build_scenario(without_pretrained(cfg), train=False, show_progress=False)
    engine.scenario = scenario
    engine.load_modules(load_checkpoint(checkpoint, engine.device), ["model"])
    return engine, scenario


def checkpoint_config(path: str, overrides: Sequence[str], workdir: str | Path | None = None) -> ExperimentConfig:
    """The config a checkpoint was trained with, with ``overrides`` applied; its workdir (where evaluation files
    go) is ``workdir``, by default the checkpoint's folder (not the run folder its config names)."""
    folder = workdir or Path(path).resolve().parent
    return load_config(None, [*overrides, f"workdir={folder}"], stored=load_checkpoint(path)["config"])


def evaluate_and_report(cfg: ExperimentConfig, checkpoint: str, depth_by_class: bool = False,
                        adabn_images: int = 0, adabn_layers: Sequence[str] = ()) -> dict:
    """``--evaluate CKPT``: metrics of the checkpoint on the validation split, printed and stored beside the run
    as ``eval-<checkpoint name>.md/json`` (the training's own results files are left alone); with
    ``depth_by_class`` also its depth errors by ground-truth class (:mod:`mtlda.depth_by_class`). With
    ``adabn_images`` > 0 the BatchNorm statistics are first re-estimated on that many unlabelled images of the
    evaluated data set's training split (:mod:`mtlda.adabn`; only those of the layers named by ``adabn_layers``, if
    given); the files are then ``eval-<name>-adabn<N>[-<layers>].*`` and the experiment is named
    ``<name>_adabn<N>[_<layers>]`` in them, a row of its own in ``mtlda results``."""
    engine, scenario = evaluate_checkpoint(cfg, checkpoint)
    suffix, notes = "", []
    if adabn_images:
        data, layers = cfg.data, "+".join(adabn_layers)
        suffix = f"-adabn{adabn_images}" + (f"-{layers}" if layers else "")
        images = build_dataset(data, data.train_split, train=False, tasks=[])  # images only, every one of them
        used = recalibrate_batchnorm(scenario.inference_model(), images, adabn_images, data.batch_size, engine.device,
                                     adabn_layers)
        cfg = replace(cfg, name=f"{cfg.name}_adabn{adabn_images}" + (f"_{layers}" if layers else ""))
        which = f"of {', '.join(adabn_layers)} " if adabn_layers else ""
        notes.append(f"AdaBN: BatchNorm statistics {which}re-estimated on the first {used} images of the "
                     f"'{data.train_split}' split (labels unused) before evaluation")
    labelled = labelled_validation_split(scenario) if depth_by_class else None
    results = scenario.evaluate_tasks(engine)
    if engine.is_main:
        report(cfg, scenario, results, f"{cfg.name} ({checkpoint})", with_baselines=False,
               stem=f"eval-{Path(checkpoint).stem}{suffix}", notes=notes)
    if labelled is not None:
        report_depth_by_class(scenario, engine, labelled, checkpoint, suffix)
    shutdown_distributed()
    return results


def train_and_report(cfg: ExperimentConfig, resume: bool = False, allow_changed: Sequence[str] = (),
                     record_reference: bool = False, split_name: str = "val") -> dict:
    """Train (or continue) a run, optionally record it as a single-task reference, print the results table."""
    if record_reference:
        refuse_unless_reference(cfg)
    engine, scenario, _ = train(cfg, resume=resume, allow_changed=allow_changed)
    if engine.is_main:
        if record_reference:
            for ref in scenario.references.record(scenario.last_results, engine.iteration):
                print(f"recorded {ref.task} reference of {cfg.name} seed {cfg.seed} in {scenario.references.path} "
                      f"({ref.count} seed(s) now)", file=sys.stderr)
        report(cfg, scenario, scenario.last_results, f"{cfg.name} (final, iteration {engine.iteration}, {split_name})")
    shutdown_distributed()
    return scenario.last_results


def baseline_rows(cfg: ExperimentConfig, scenario: DenseScenario) -> dict[str, dict]:
    """Metrics of the trivial baselines (global constants, per-pixel prior) on the validation split."""
    with isolated_rng():
        plain = build_dataset(cfg.data, cfg.data.train_split, train=False, tasks=target_names(scenario.tasks))
        priors = fit_priors(plain, scenario.tasks)
        results = evaluate_priors(priors, scenario.tasks, scenario.val_split)
    return {f"trivial: {kind}": res for kind, res in results.items()}


def _reference_rows(scenario: DenseScenario) -> tuple[dict, dict, str]:
    refs = scenario.references.references() if scenario.references.multitask else {}
    if not refs:
        return {}, {}, ""
    seeds = sorted({ref.count for ref in refs.values()})
    name = f"single-task references ({'/'.join(map(str, seeds))} seeds)"
    row = {task: ref.mean() for task, ref in refs.items()}
    spread = {task: ref.std() for task, ref in refs.items()}
    sources = ", ".join(f"{ref.experiment} ({ref.count} seeds, {ref.iterations} it.)" for ref in refs.values())
    return {name: row}, {name: spread}, sources


def report(cfg: ExperimentConfig, scenario: DenseScenario, results: Mapping[str, Mapping[str, float]], title: str,
           with_baselines: bool = True, stem: str = "results", extra_rows: Mapping[str, dict] | None = None,
           notes: Sequence[str] = ()) -> str:
    """Print and store (``<stem>.md`` and ``<stem>.json`` in the run folder, atomically) the results table of a
    run: trivial baselines, single-task references (multi-task runs), ``extra_rows``, then ``results``."""
    rows: dict[str, dict] = {}
    if with_baselines:
        rows.update(baseline_rows(cfg, scenario))
    ref_rows, ref_spread, ref_sources = _reference_rows(scenario)
    rows.update(ref_rows)
    rows.update(extra_rows or {})
    rows[title] = dict(results)
    multi = scenario.references.multitask
    delta = scenario.references.delta(results) if multi else None
    deltas: dict[str, Any] | None = {title: delta} if multi else None
    tasks = list(scenario.tasks)
    protocols = scenario.references.protocol
    key = scenario.references.key
    lines = [f"## {cfg.name}: {key.dataset} ({key.classes} classes) at {key.resolution}, validation split "
             f"'{cfg.data.val_split}'" + (f", {key.setting}" if key.setting else ""), "",
             results_table(rows, tasks, deltas, ref_spread), ""]
    for name, task in scenario.tasks.items():
        if task.class_names and results.get(name):
            lines += ["Per-class IoU %:", "", per_class_table({title: results[name]}, task.class_names), ""]
    lines += ["Protocol:", protocol_block(protocols)]
    if multi and delta is not None:
        lines.append(f"- Δ_MTL: the paper's multi-task delta vs the mean of the single-task references above "
                     f"({ref_sources}; main metric per task), ± its standard error from the references' seeds")
        budget = scenario.references.budget_warning(cfg.train.iterations)
        if budget:
            lines.append(f"- {budget}")
    elif multi:
        lines.append(f"- Δ_MTL not shown: the {key.describe()} are not all recorded in {scenario.references.path} "
                     f"(train each single-task reference experiment with --record-reference)")
    lines += [f"- {note}" for note in notes]
    text = "\n".join(lines) + "\n"
    workdir = Path(cfg.workdir)
    write_text_atomic(workdir / f"{stem}.md", text)
    payload = {"name": cfg.name, "seed": cfg.seed, "scenario": cfg.scenario, "key": key.__dict__,
               "dataset": f"{key.dataset}@{key.resolution}" + (f" ({key.setting})" if key.setting else ""),
               "results": dict(results), "details": scenario.last_details,
               "delta": delta[0] if delta else None, "delta_se": delta[1] if delta else None,
               "protocol": protocols, "other_rows": {k: v for k, v in rows.items() if k != title}}
    write_text_atomic(workdir / f"{stem}.json", json.dumps(payload, indent=2))
    print(text)
    return text
