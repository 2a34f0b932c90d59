"""The cases of a comparison: each the engine's real training step of one configuration, built, interleaved and
summarised."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mtlda.benchmarking import plan
from mtlda.benchmarking.measure import (
    MemoryProbe,
    cpu_allocated_peak_bytes,
    is_oom,
    load_average,
    release_memory,
    state_bytes,
    timed,
)
from mtlda.benchmarking.plan import VARIANT_NOTES, VARIANTS, Comparison, Subject, Variant
from mtlda.benchmarking.random_data import with_random_data
from mtlda.config import load_config
from mtlda.scenarios.checkpoint import save_checkpoint
from mtlda.scenarios.dense import DenseScenario, input_size
from mtlda.scenarios.engine import Engine, StepOutput
from mtlda.scenarios.optim import build_scheduler
from mtlda.scenarios.registry import scenario_class
from mtlda.scenarios.runner import build_scenario
from mtlda.schema import ExperimentConfig


def use_per_parameter_optimizers(engine: Engine) -> None:
    """Rebuild every optimiser of an attached engine as torch's per-parameter loop (foreach=False, fused=False),
    with the same groups, settings and schedules (before any step: their states are empty)."""
    for name, opt in engine.optimizers.items():
        loop_kernel = {"foreach": False, "fused": False}
        groups = [{**{k: v for k, v in g.items() if k != "initial_lr"}, **loop_kernel} for g in opt.param_groups]
        loop = type(opt)(groups, **{**opt.defaults, **loop_kernel})
        engine.optimizers[name] = loop
        engine.schedulers[name] = build_scheduler(loop, engine.specs[name].settings, engine.cfg.train.iterations)


def case_config(subject: Subject, variant: Variant, size: tuple[int, int] | None, batch: int,
                device: torch.device, workdir: Path, extra: Sequence[str] = ()) -> ExperimentConfig:
    """The config of one case: the experiment with the variant's overrides at ``size`` and ``batch``."""
    overrides = [*subject.overrides, f"device={device}", f"workdir={workdir}", "train.threads=0",
                 "train.selection_metric=semseg/miou", "data.workers=0", "uda.source.workers=0",
                 "data.toycity.num_train=48", "data.toycity.num_val=8", "data.max_val_samples=8"]
    for data in ("data", "uda.source"):
        if size is not None:
            h, w = size
            overrides += [f"{data}.height={h}", f"{data}.width={w}", f"{data}.crop=[]", f"{data}.val_height=0",
                          f"{data}.val_width=0", f"{data}.toycity.height={h}", f"{data}.toycity.width={w}"]
        if batch:
            overrides.append(f"{data}.batch_size={batch}")
    return load_config(subject.experiment, [*overrides, *variant.overrides, *extra])


def write_pretrain_checkpoint(cfg: ExperimentConfig, folder: Path) -> Path:
    """An SDE pretrain checkpoint (random weights) of ``cfg``'s model settings, to start its multi-task stage."""
    pretrain = replace(cfg, sde=replace(cfg.sde, stage="pretrain"),
                       train=replace(cfg.train, selection_metric="disp/abs_rel", compile=False))
    engine, scenario = build_scenario(pretrain, train=True, show_progress=False,
                                      scenario_type=with_random_data(scenario_class("sde")))
    engine.attach(scenario)
    path = folder / "pretrain.pt"
    save_checkpoint(engine.state(), path)
    return path


@dataclass
class Case:
    """A built case: its engine, scenario and batch iterator, and what it measured."""

    variant: str
    engine: Engine
    scenario: DenseScenario
    batches: Iterator[Any]
    shape: str
    parameters: int
    times: list[float] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    allocated_extra: int | None = None
    first_s: float | None = None
    status: str = "ok"

    def step(self) -> StepOutput:
        """One training step of the engine (as ``Engine.fit`` runs it, without logging and checkpoints)."""
        out = self.scenario.train_step(next(self.batches), self.engine)
        self.engine._check_finite(out)
        self.engine._optimizer_step()
        self.scenario.after_step(self.engine)
        self.engine.iteration += 1
        return out


def build_case(comparison: Comparison, variant: Variant, device: torch.device, workdir: Path,
               extra: Sequence[str] = ()) -> Case:
    """Engine, scenario and training batches of one variant, ``extra`` overrides last (seeded: every variant starts
    from the same weights)."""
    subject = plan.SUBJECTS[comparison.subject]
    cfg = case_config(subject, variant, comparison.size, comparison.batch, device, workdir, extra)
    if cfg.scenario == "sde" and cfg.sde.stage == "multitask":
        cfg = replace(cfg, sde=replace(cfg.sde, init_from=str(write_pretrain_checkpoint(cfg, workdir))))
    kind = scenario_class(cfg.scenario)
    engine, scenario = build_scenario(cfg, train=True, show_progress=False,
                                      scenario_type=None if subject.toycity else with_random_data(kind))
    engine.attach(scenario)
    if variant.per_parameter_optimizer:
        use_per_parameter_optimizers(engine)
    h, w = input_size(cfg.data, train=True)
    parameters = sum(p.numel() for m in scenario.modules().values() for p in m.parameters())
    return Case(variant.name, engine, scenario, scenario.train_batches(0), f"{cfg.data.batch_size}x3x{h}x{w}",
                parameters)


def _unless_oom(case: Case, fn: Callable[[], Any], device: torch.device) -> Any | None:
    """``fn()``; if it runs out of memory: the case marked, its gradients freed, None."""
    try:
        return fn()
    except (RuntimeError, MemoryError) as error:
        if not is_oom(error):
            raise
        case.status = "OOM"
        for opt in case.engine.optimizers.values():
            opt.zero_grad(set_to_none=True)
        release_memory(device)
        return None


def interleave(cases: Sequence[Case], warmup: int, iters: int, device: torch.device, probe: MemoryProbe) -> None:
    """Rounds of one step of every case in turn; the first ``warmup`` rounds are not timed (the first step of each
    case is kept as ``first_s``: compilation, lazy initialisation). A case that runs out of memory is marked and
    left out of the later rounds. One progress line per round on stderr. On a CPU, a last untimed round of two steps
    per case measures the second's allocator peak (:func:`cpu_allocated_peak_bytes`)."""
    for round_index in range(warmup + iters):
        timed_round = round_index >= warmup
        line = []
        for case in (c for c in cases if c.status == "ok"):
            probe.start()
            seconds = _unless_oom(case, lambda: timed(case.step, device), device)
            if seconds is None:
                continue
            extra = probe.extra_bytes()
            if round_index == 0:
                case.first_s = seconds
            if timed_round:
                case.times.append(seconds * 1000)
                case.extra.append(extra)
            line.append(f"{case.variant} {seconds * 1000:.0f}")
        print(f"  round {round_index + 1}/{warmup + iters} ({'timed' if timed_round else 'warm-up'}, load "
              f"{load_average()}): {', '.join(line)} ms", file=sys.stderr)
    if device.type == "cpu":
        for case in (c for c in cases if c.status == "ok"):
            case.allocated_extra = _unless_oom(
                case, lambda: cpu_allocated_peak_bytes(case.step, lead_in=case.step), device)
        print(f"  memory round (allocator peaks, load {load_average()})", file=sys.stderr)


def summarise(case: Case, reference: dict[str, Any] | None) -> dict[str, Any]:
    """Median ms/step, peak MiB (state + step peak) and their ratios to ``reference``."""
    ms = statistics.median(case.times)
    static = state_bytes(case.engine, case.scenario)
    extra = max(case.extra) if case.allocated_extra is None else case.allocated_extra
    row = {"config": case.variant, "note": VARIANT_NOTES.get(case.variant, ""), "status": "ok",
           "input": case.shape, "parameters": case.parameters, "ms_per_step": ms, "ms_all": case.times,
           "images_per_s": int(case.shape.split("x")[0]) * 1000 / ms, "peak_mib": (static + extra) / 2**20,
           "state_mib": static / 2**20, "step_extra_mib": extra / 2**20, "first_step_s": case.first_s}
    if case.allocated_extra is not None:
        row["step_rss_mib"] = [e / 2**20 for e in case.extra]
    if case.variant == "compile" and case.first_s is not None:
        row["compile_s"] = case.first_s - ms / 1000
    if reference is not None and reference.get("status") == "ok":
        row["ratio"] = ms / reference["ms_per_step"]
        row["peak_ratio"] = row["peak_mib"] / reference["peak_mib"]
    return row


def run_comparison(comparison: Comparison, device: torch.device, probe: MemoryProbe, workdir: Path,
                   overrides: Sequence[str] = ()) -> dict:
    """Build every variant of ``comparison`` (with ``overrides``), interleave their steps and summarise them
    (reference first)."""
    release_memory(device)  # what the previous comparison left
    load_before = load_average()
    cases: list[Case] = []
    skipped: dict[str, str] = {}
    for name in comparison.variants:
        variant = VARIANTS[name]
        if variant.cuda_only and device.type != "cuda":
            skipped[name] = "skipped: needs CUDA"
            continue
        try:
            cases.append(build_case(comparison, variant, device, workdir / name, overrides))
        except (RuntimeError, MemoryError) as error:
            if not is_oom(error):
                raise
            skipped[name] = "OOM while building"
    interleave(cases, comparison.warmup, comparison.iters, device, probe)
    rows, reference = [], None
    for name in comparison.variants:
        case = next((c for c in cases if c.variant == name), None)
        if case is None or case.status != "ok":
            rows.append({"config": name, "note": VARIANT_NOTES.get(name, ""),
                         "status": case.status if case else skipped[name]})
        else:
            rows.append(summarise(case, reference))
        if reference is None:
            reference = rows[-1]
    return {"title": comparison.title, **asdict(comparison), "reference": comparison.variants[0],
            "data": "toycity" if plan.SUBJECTS[comparison.subject].toycity else "random batches of the data's shapes",
            "load_before": load_before, "load_after": load_average(), "results": rows}
