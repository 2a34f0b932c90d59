"""Time and peak memory of the real training step under every speed option, side by side in one process.

Every case is the engine's own training step (next batch, forward, losses, backward, gradient clipping, optimiser
and schedule, task-weighting update) of a scenario built by ``build_scenario``, timed as ``next(batches)``,
``scenario.train_step``, ``engine._optimizer_step`` and ``scenario.after_step``. The configurations of one
comparison are built together and **interleaved** (A, B, C, A, B, C, ...), so a load change on a shared machine
hits all of them alike: read the ratios, not the absolute times. Each comparison records the load average
(/proc/loadavg) before and after it.

Comparisons (the first configuration of each is its reference, ratio 1):

- ``options``: plain (channels_last off, per-parameter Adam loop, foreach=False and fused=False), default (the
  shipped settings: channels_last, fused Adam), each option alone or on top of the default: channels_last,
  fused_optimizer, checkpoint_encoder / checkpoint_all (``model.checkpointing``), bf16 (autocast), fp16 (autocast
  with GradScaler, CUDA only), compile (``torch.compile``; its first step, the compilation, is reported as
  ``compile_s`` and left out of the step time), for the toycity demo model (toycity data) and the paper's S-D and
  S-D-N (random batches of the right shapes: no data set needed) at the demo size 128x256;
- ``paper``: the same models at the paper's 512x1024 (on a CPU: fewer configurations and iterations, and the
  ResNet-101 models at 256x512, whose 512x1024 step does not fit 24 GB at batch 2, BatchNorm's minimum there);
- ``weighting``: every task-weighting method (``tasks.weighting``) against fixed weights on the demo model;
- ``xtam``: one directional xTAM (forward + backward of the module alone) with scaled_dot_product_attention and
  with the explicit softmax(QK^T)V, and which SDPA kernels run (the profiler's aten ops; on CUDA also each backend
  forced alone through ``torch.nn.attention.sdpa_kernel``);
- ``data`` (``--data``): images/s of the toycity loader (Cityscapes format, demo size) with 0/1/2 workers (and
  pinned memory on CUDA), the latency of a loader's first batch (paid once per epoch, what persistent workers would
  save), and the training step with 0/1/2 workers, in interleaved blocks of steps with a fresh loader each;
- ``scenarios`` (CUDA): the supervised, UDA and SDE training steps of the paper's experiments at their resolution.

Memory: the case's parameters, buffers and optimiser state (counted from its tensors) plus the step's own peak
above the memory in use just before it: ``torch.cuda.max_memory_allocated`` on CUDA; on a CPU the process's peak
resident set (VmHWM, reset through /proc/self/clear_refs after returning freed heap pages with malloc_trim).

examples:
  mtlda benchmark --data                          # every CPU comparison -> benchmarks/cpu.json (1-2 hours, 2 cores)
  mtlda benchmark --device cuda --data            # the same plus AMP fp16 and the scenarios -> benchmarks/gpu.json
  mtlda benchmark --quick --sections options      # smoke test at 32x64 (a minute)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import Dataset

from mtlda.config import load_config
from mtlda.constants import IGNORE_INDEX
from mtlda.data.batch import Sample, collate
from mtlda.data.sampling import infinite_batches
from mtlda.data.targets import BINARY_MAP, LABEL_MAP, UNIT_VECTORS, target_kind
from mtlda.errors import UserInputError
from mtlda.files import write_text_atomic
from mtlda.models import XTAM
from mtlda.scenarios.checkpoint import save_checkpoint
from mtlda.scenarios.dense import DenseScenario, input_size, target_names
from mtlda.scenarios.engine import Engine, StepOutput
from mtlda.scenarios.optim import build_scheduler
from mtlda.scenarios.registry import scenario_class
from mtlda.scenarios.runner import build_scenario
from mtlda.schema import DataConfig, ExperimentConfig

DEMO_SIZE = (128, 256)
PAPER_SIZE = (512, 1024)
HALF_PAPER_SIZE = (256, 512)
QUICK_SIZE = (32, 64)
SECTIONS = ("options", "paper", "weighting", "xtam", "scenarios", "data")
WEIGHTINGS = ("fixed", "uncertainty", "dwa", "gradnorm", "pcgrad", "cagrad", "nashmtl", "famo")
DEFAULT_OUT = {"cpu": Path("benchmarks/cpu.json"), "cuda": Path("benchmarks/gpu.json")}


# ------------------------------------------------------------------------------------------ what is compared
@dataclass(frozen=True)
class Subject:
    """An experiment to train: its file, overrides, and whether it reads toycity (else random batches)."""

    description: str
    experiment: str
    overrides: tuple[str, ...] = ()
    toycity: bool = False


@dataclass(frozen=True)
class Variant:
    """A configuration of a subject: config overrides, and the per-parameter optimiser loop instead of fused."""

    name: str
    overrides: tuple[str, ...] = ()
    per_parameter_optimizer: bool = False
    cuda_only: bool = False


PAPER = ("model.pretrained=none",)
SUBJECTS = {
    "demo": Subject("demo S-D-N mTEB, ResNet-18 (toycity)", "experiments/supervised/toycity/sdn_mteb.yaml",
                    toycity=True),
    "paper_sd": Subject("paper S-D mTEB, ResNet-101", "experiments/supervised/cityscapes/sd_mteb.yaml", PAPER),
    "paper_sdn": Subject("paper S-D-N mTEB, ResNet-101", "experiments/supervised/cityscapes/sdn_mteb.yaml", PAPER),
    "supervised": Subject("supervised S-D mTEB, Cityscapes", "experiments/supervised/cityscapes/sd_mteb.yaml", PAPER),
    "uda": Subject("UDA S-D mTEB, Synthia -> Cityscapes", "experiments/uda/synthia2cityscapes/sd_mteb.yaml", PAPER),
    "sde": Subject("SDE S + self-supervised depth, mTEB, Cityscapes", "experiments/sde/cityscapes/sd_mteb.yaml",
                   PAPER),
}
PLAIN = ("train.channels_last=false",)
VARIANTS = {
    "plain": Variant("plain", PLAIN, per_parameter_optimizer=True),
    "default": Variant("default"),
    "channels_last": Variant("channels_last", ("train.channels_last=true",), per_parameter_optimizer=True),
    "fused_optimizer": Variant("fused_optimizer", PLAIN),
    "compile": Variant("compile", ("train.compile=true",)),
    "checkpoint_encoder": Variant("checkpoint_encoder", ("model.checkpointing=encoder",)),
    "checkpoint_all": Variant("checkpoint_all", ("model.checkpointing=all",)),
    "no_exchange": Variant("no_exchange", ("model.block=none",)),
    "bf16": Variant("bf16", ("train.amp=true", "train.amp_dtype=bf16")),
    "fp16": Variant("fp16", ("train.amp=true", "train.amp_dtype=fp16"), cuda_only=True),
    **{f"weighting_{name}": Variant(f"weighting_{name}", (f"tasks.weighting={{name: {name}}}",))
       for name in WEIGHTINGS},
}
VARIANT_NOTES = {
    "plain": "channels_last off, per-parameter Adam loop (foreach=False, fused=False)",
    "default": "shipped settings: channels_last on, fused Adam",
    "channels_last": "plain + channels_last",
    "fused_optimizer": "plain + fused Adam",
    "compile": "default + torch.compile (compile_s: the first step)",
    "checkpoint_encoder": "default + model.checkpointing=encoder",
    "checkpoint_all": "default + model.checkpointing=all",
    "no_exchange": "default without the exchange block (model.block=none): what mTEB costs",
    "bf16": "default + bf16 autocast",
    "fp16": "default + fp16 autocast with GradScaler",
    **{f"weighting_{name}": f"default + tasks.weighting={{name: {name}}}" for name in WEIGHTINGS},
}


@dataclass(frozen=True)
class Comparison:
    """Variants of one subject at one input size, interleaved; ``batch`` 0 keeps the experiment's batch size and
    ``size`` None its resolution."""

    section: str
    subject: str
    size: tuple[int, int] | None
    batch: int
    variants: tuple[str, ...]
    warmup: int
    iters: int

    @property
    def title(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "experiment size"
        return f"{self.section}: {SUBJECTS[self.subject].description} @ {size}"


OPTIONS = ("plain", "default", "channels_last", "fused_optimizer", "checkpoint_encoder", "checkpoint_all", "bf16",
           "fp16", "no_exchange", "compile")


def plan(device: torch.device, sections: Sequence[str], quick: bool) -> list[Comparison]:
    """The comparisons to run: all variants everywhere on CUDA; on a CPU fewer at the paper's sizes (slow there)."""
    cuda = device.type == "cuda"
    weighting = tuple(f"weighting_{name}" for name in WEIGHTINGS)
    if quick:
        small = ("plain", "default", "channels_last", "fused_optimizer", "checkpoint_all", "bf16")
        comparisons = [Comparison("options", "demo", QUICK_SIZE, 2, small, 1, 1),
                       Comparison("paper", "paper_sd", QUICK_SIZE, 2, ("default", "checkpoint_all"), 0, 1),
                       Comparison("weighting", "demo", QUICK_SIZE, 2, weighting, 0, 1)]
        comparisons += [Comparison("scenarios", name, QUICK_SIZE, 2, ("default",), 0, 1)
                        for name in ("supervised", "uda", "sde")]
    elif cuda:
        comparisons = [Comparison("options", name, DEMO_SIZE, 0 if name == "demo" else 2, OPTIONS, 3, 10)
                       for name in ("demo", "paper_sd", "paper_sdn")]
        comparisons += [Comparison("paper", name, PAPER_SIZE, 2, OPTIONS, 3, 10)
                        for name in ("demo", "paper_sd", "paper_sdn")]
        comparisons.append(Comparison("weighting", "demo", DEMO_SIZE, 0, weighting, 3, 10))
        comparisons += [Comparison("scenarios", name, None, 0, ("default", "bf16", "fp16"), 3, 10)
                        for name in ("supervised", "uda", "sde")]
    else:  # the paper's S-D at 512x1024 needs more than this machine's 24 GB at batch 2 (ASPP BatchNorm's minimum)
        every = ("plain", "default", "channels_last", "fused_optimizer", "checkpoint_encoder", "checkpoint_all",
                 "bf16")
        memory = ("default", "checkpoint_encoder", "checkpoint_all")
        comparisons = [Comparison("options", "demo", DEMO_SIZE, 0, (*every, "no_exchange", "compile"), 1, 8),
                       Comparison("options", "paper_sd", DEMO_SIZE, 2,
                                  tuple(v for v in every if v != "checkpoint_encoder"), 1, 6),
                       Comparison("options", "paper_sdn", DEMO_SIZE, 2, ("plain", "default", "checkpoint_all"), 1, 3),
                       Comparison("paper", "demo", PAPER_SIZE, 2, ("plain", "default", "checkpoint_all", "bf16"), 1, 2),
                       Comparison("paper", "paper_sd", HALF_PAPER_SIZE, 2, memory, 0, 2),
                       Comparison("paper", "paper_sdn", HALF_PAPER_SIZE, 2, memory[::2], 0, 2),
                       Comparison("weighting", "demo", DEMO_SIZE, 0, weighting, 1, 5)]
    return [c for c in comparisons if c.section in sections]


# ---------------------------------------------------------------------------------------------- random data
class RandomSplit(Dataset):
    """``count`` fixed random samples of size (H, W): image, K, every target of ``targets`` (by its kind) with its
    validity mask, and the neighbour frames ``frames``. Stands in for a data set that is not on disk."""

    def __init__(self, targets: Sequence[str], num_classes: int, size: tuple[int, int], frames: Sequence[int],
                 count: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.samples = [self._sample(targets, num_classes, size, frames, g, index) for index in range(count)]

    @staticmethod
    def _sample(targets: Sequence[str], num_classes: int, size: tuple[int, int], frames: Sequence[int],
                g: torch.Generator, index: int) -> Sample:
        h, w = size
        K = torch.tensor([[float(w), 0.0, w / 2], [0.0, float(w), h / 2], [0.0, 0.0, 1.0]])
        sample = Sample(torch.rand(3, h, w, generator=g), K, id=f"random-{index}",
                        frames={offset: torch.rand(3, h, w, generator=g) for offset in frames})
        for name in targets:
            kind = target_kind(name)
            if kind is LABEL_MAP:
                labels = torch.randint(0, num_classes, (h, w), generator=g)
                sample.targets[name] = torch.where(torch.rand(h, w, generator=g) < 0.05, IGNORE_INDEX, labels)
                continue
            if kind is UNIT_VECTORS:
                vectors = torch.randn(3, h, w, generator=g) - torch.tensor([0.0, 0.0, 2.0])[:, None, None]
                sample.targets[name] = vectors / vectors.norm(dim=0, keepdim=True)
            elif kind is BINARY_MAP:
                sample.targets[name] = (torch.rand(1, h, w, generator=g) < 0.1).float()
            else:
                sample.targets[name] = 2 + 78 * torch.rand(1, h, w, generator=g)
            sample.masks[name] = torch.rand(1, h, w, generator=g) > 0.05
        return sample

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def with_random_data(cls: type[DenseScenario]) -> type[DenseScenario]:
    """``cls`` reading :class:`RandomSplit` samples of its data configs' training size instead of files."""

    def build_split(self: DenseScenario, data: DataConfig, split: str, train: bool) -> Dataset:
        return RandomSplit(target_names(self.tasks), self.info.num_classes, input_size(data, train),
                           data.frames if train else (), count=2 * data.batch_size)

    return type(f"Random{cls.__name__}", (cls,), {"build_split": build_split})


# -------------------------------------------------------------------------------------------------- memory
def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_freed_cpu_memory() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim), so that the next RSS peak starts from live memory."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


class MemoryProbe:
    """Peak memory of a code region above the memory in use at :meth:`start`: CUDA allocator or CPU peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.note = ""
        if device.type != "cuda":
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.note = "peak RSS could not be reset: CPU peaks are the process peak so far"

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            _release_freed_cpu_memory()
            if not self.note:
                Path("/proc/self/clear_refs").write_text("5")
            self.before = (_proc_status_kb("VmRSS") or 0) * 1024

    def extra_bytes(self) -> int:
        """The region's peak minus the memory in use at :meth:`start`."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.before
        return (_proc_status_kb("VmHWM") or 0) * 1024 - self.before


def tensor_bytes(tensors: Iterator[Tensor]) -> int:
    """Bytes held by distinct tensors (each storage counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def state_bytes(engine: Engine, scenario: DenseScenario) -> int:
    """Parameters and buffers of the scenario's modules plus every optimiser's state."""
    modules = list(scenario.modules().values())

    def tensors() -> Iterator[Tensor]:
        for module in modules:
            yield from module.parameters()
            yield from module.buffers()
        for opt in engine.optimizers.values():
            for state in opt.state.values():
                yield from (v for v in state.values() if isinstance(v, Tensor))

    return tensor_bytes(tensors())


def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text \
        or "can't allocate" in text


# --------------------------------------------------------------------------------------------- the cases
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    subject = SUBJECTS[comparison.subject]
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


# ---------------------------------------------------------------------------------------------- measuring
def load_average() -> str:
    """The 1, 5 and 15 minute load averages (as ``uptime`` prints them)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


@contextlib.contextmanager
def environment_variable(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside the context, the previous state restored after it."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds ``fn`` takes (device work included)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleave(cases: Sequence[Case], warmup: int, iters: int, device: torch.device, probe: MemoryProbe) -> None:
    """Rounds of one step of every case in turn; the first ``warmup`` rounds are not timed (the first step of each
    case is kept as ``first_s``: compilation, lazy initialisation). A case that runs out of memory is marked and
    left out of the later rounds. One progress line per round on stderr."""
    for round_index in range(warmup + iters):
        timed_round = round_index >= warmup
        line = []
        for case in (c for c in cases if c.status == "ok"):
            probe.start()
            try:
                seconds = timed(case.step, device)
            except (RuntimeError, MemoryError) as error:
                if not _is_oom(error):
                    raise
                case.status = "OOM"
                for opt in case.engine.optimizers.values():
                    opt.zero_grad(set_to_none=True)
                release_memory(device)
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


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def summarise(case: Case, reference: dict[str, Any] | None) -> dict[str, Any]:
    """Median ms/step, peak MiB (state + step peak) and their ratios to ``reference``."""
    ms = statistics.median(case.times)
    static = state_bytes(case.engine, case.scenario)
    extra = max(case.extra)
    row = {"config": case.variant, "note": VARIANT_NOTES.get(case.variant, ""), "status": "ok",
           "input": case.shape, "parameters": case.parameters, "ms_per_step": ms, "ms_all": case.times,
           "images_per_s": int(case.shape.split("x")[0]) * 1000 / ms, "peak_mib": (static + extra) / 2**20,
           "state_mib": static / 2**20, "step_extra_mib": extra / 2**20, "first_step_s": case.first_s}
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
            if not _is_oom(error):
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
            "data": "toycity" if SUBJECTS[comparison.subject].toycity else "random batches of the data's shapes",
            "load_before": load_before, "load_after": load_average(), "results": rows}


# ---------------------------------------------------------------------------------------------------- xTAM
def xtam_comparison(device: torch.device, size: tuple[int, int], batch: int, iters: int, warmup: int,
                    probe: MemoryProbe) -> dict:
    """One directional xTAM (128 channels, pooling 4: stage-1 features of a 512x1024 input are 256x512, 8192
    tokens), forward + backward, SDPA against the explicit softmax, interleaved."""
    load_before = load_average()
    channels, downscale = 128, 4
    g = torch.Generator().manual_seed(0)
    target = torch.randn(batch, channels, *size, generator=g).to(device)
    source = torch.randn(batch, channels, *size, generator=g).to(device)
    modules = {}
    for name, use_sdpa in (("xtam_sdpa", True), ("xtam_explicit", False)):
        torch.manual_seed(0)
        module = XTAM(channels, downscale, use_sdpa=use_sdpa).to(device).train()
        nn.init.constant_(module.alpha, 0.1)
        modules[name] = module
    times: dict[str, list[float]] = {name: [] for name in modules}
    extra: dict[str, list[int]] = {name: [] for name in modules}
    for round_index in range(warmup + iters):
        for name, module in modules.items():
            module.zero_grad(set_to_none=True)
            probe.start()
            seconds = timed(lambda: module(target, source).mean().backward(), device)
            if round_index >= warmup:
                times[name].append(seconds * 1000)
                extra[name].append(probe.extra_bytes())
    tokens = (size[0] // downscale) * (size[1] // downscale)
    rows = []
    for name in modules:
        ms = statistics.median(times[name])
        shape = f"{batch}x{channels}x{size[0]}x{size[1]} ({tokens} tokens)"
        rows.append({"config": name, "status": "ok", "input": shape,
                     "ms_per_step": ms, "ms_all": times[name], "step_extra_mib": max(extra[name]) / 2**20,
                     "ratio": ms / statistics.median(times["xtam_sdpa"]),
                     "extra_ratio": max(extra[name]) / max(max(extra["xtam_sdpa"]), 1)})
    return {"title": "xtam: one directional xTAM, forward + backward of the module", "reference": "xtam_sdpa",
            "load_before": load_before, "load_after": load_average(), "results": rows,
            "sdpa_kernels": sdpa_kernels(modules["xtam_sdpa"], target, source, device)}


SDPA_OP_PREFIX = "aten::_scaled_dot_product"


class _RecordedOps(TorchDispatchMode):
    """The names of the aten ops that run inside the context."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def sdpa_ops(module: nn.Module, target: Tensor, source: Tensor, dtype: torch.dtype | None) -> list[str]:
    """The SDPA kernels (aten ops) one forward of ``module`` dispatches to, under autocast to ``dtype`` if given."""
    autocast = torch.autocast(target.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with _RecordedOps() as ops, autocast, torch.no_grad():
        module(target, source)
    return sorted(name for name in ops.names if name.startswith(SDPA_OP_PREFIX))


def sdpa_kernels(module: nn.Module, target: Tensor, source: Tensor, device: torch.device) -> dict[str, Any]:
    """Which SDPA kernels the xTAM uses at this size (fp32 and the autocast dtypes of the device) and, on CUDA,
    whether each backend runs forward + backward when it is the only one allowed."""
    dtypes = {"fp32": None, "bf16": torch.bfloat16, **({"fp16": torch.float16} if device.type == "cuda" else {})}
    report: dict[str, Any] = {"ops": {name: sdpa_ops(module, target, source, dtype) for name, dtype in dtypes.items()}}
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = {}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH):
            for name, dtype in dtypes.items():
                autocast = torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
                try:
                    with sdpa_kernel(backend), autocast:
                        module(target, source).float().mean().backward()
                    torch.cuda.synchronize(device)
                    backends[f"{backend.name}/{name}"] = "runs"
                except RuntimeError as error:
                    backends[f"{backend.name}/{name}"] = f"unavailable: {str(error).splitlines()[0][:120]}"
        report["forced_backends"] = backends
    return report


# ---------------------------------------------------------------------------------------------------- data
def loader_rates(split: Dataset, batch: int, workers: Sequence[int], pin: bool, batches: int, rounds: int
                 ) -> list[dict[str, Any]]:
    """images/s of the training loader (``infinite_batches``) per worker count, and the latency of its first
    batch (an epoch's start), in interleaved blocks with a fresh loader each."""
    results: dict[int, dict[str, list[float]]] = {w: {"first": [], "rate": []} for w in workers}
    for _ in range(rounds):
        for count in workers:
            start = time.perf_counter()
            loader = infinite_batches(split, batch, 0, 0, collate, workers=count, pin_memory=pin)
            next(loader)
            first = time.perf_counter()
            for _ in range(batches):
                next(loader)
            done = time.perf_counter()
            loader.close()
            results[count]["first"].append(first - start)
            results[count]["rate"].append(batches * batch / (done - first))
    return [{"workers": count, "pin_memory": pin, "images_per_s": statistics.median(r["rate"]),
             "first_batch_s": statistics.median(r["first"])} for count, r in results.items()]


def run_steps(case: Case, count: int) -> None:
    for _ in range(count):
        case.step()


def step_rates(cases: Mapping[int, Case], steps: int, rounds: int, device: torch.device) -> list[dict[str, Any]]:
    """images/s of the training step, loading included, per ``data.workers``: interleaved blocks of ``steps``
    steps, each with a fresh loader (no batch is prefetched while another case runs)."""
    rates: dict[int, list[float]] = {w: [] for w in cases}
    for _ in range(rounds):
        for count, case in cases.items():
            case.batches = case.scenario.train_batches(case.engine.iteration)
            seconds = timed(functools.partial(run_steps, case, steps), device)
            case.batches.close()
            rates[count].append(steps * case.scenario.cfg.data.batch_size / seconds)
    base = statistics.median(next(iter(rates.values())))
    return [{"workers": count, "step_images_per_s": statistics.median(r), "speedup": statistics.median(r) / base,
             "all": r} for count, r in rates.items()]


def data_section(device: torch.device, quick: bool, workdir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Loader throughput per worker count against the training step's rate, to choose ``data.workers``."""
    load_before = load_average()
    size = QUICK_SIZE if quick else DEMO_SIZE
    comparison = Comparison("data", "demo", size, 2 if quick else 0, ("default",), 0, 1)
    workers = (0, 1) if quick else (0, 1, 2)
    batches, rounds, steps = (2, 1, 2) if quick else (8, 4, 3)
    cases = {w: build_case(comparison, VARIANTS["default"], device, workdir / f"workers{w}",
                           [*overrides, f"data.workers={w}"]) for w in workers}
    for case in cases.values():
        case.step()  # warm-up
    first = cases[workers[0]].scenario
    split, batch = first.train_split, first.cfg.data.batch_size
    loaders = loader_rates(split, batch, workers, False, batches, rounds)
    if device.type == "cuda":
        loaders += loader_rates(split, batch, workers, True, batches, rounds)
    steps_rows = step_rates(cases, steps, rounds, device)
    serial_step = steps_rows[0]["step_images_per_s"]
    for row in loaders:
        row["startup_s"] = max(row["first_batch_s"] - batch / row["images_per_s"], 0.0)
        row["startup_share_of_epoch"] = row["startup_s"] * serial_step / len(split)
    serial_loader = next(row for row in loaders if row["workers"] == 0)
    return {"title": f"data: toycity (cityscapes format) {size[0]}x{size[1]}, batch {batch}",
            "load_before": load_before, "load_after": load_average(), "cpu_count": os.cpu_count(),
            "loader": loaders, "train_step": steps_rows,
            "pin_memory": "measured" if device.type == "cuda" else "not measured: needs CUDA",
            "loading_share_of_serial_step": serial_step / serial_loader["images_per_s"]}


# ---------------------------------------------------------------------------------------------- the report
def machine_info(device: torch.device) -> dict[str, object]:
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown_table(comparisons: Sequence[dict]) -> str:
    """One row per configuration: ms/step and peak memory with their ratios to the comparison's reference."""
    rows = ["| comparison | config | input | ms/step | ratio | peak MiB | ratio | status |",
            "|---|---|---|---:|---:|---:|---:|---|"]
    for comparison in comparisons:
        for r in comparison["results"]:
            rows.append(f"| {comparison['title']} | {r['config']} | {r.get('input', '-')} | "
                        f"{_fmt(r.get('ms_per_step'), 1)} | {_fmt(r.get('ratio'), 2)} | {_fmt(r.get('peak_mib'))} | "
                        f"{_fmt(r.get('peak_ratio'), 2)} | {r['status']} |")
    return "\n".join(rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtlda benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, metavar="NAME",
                   help=f"comparisons to run, among {', '.join(SECTIONS)} (default: all but data; scenarios on CUDA "
                        "and with --quick only)")
    p.add_argument("--data", action="store_true", help="add the data section (loader images/s, data.workers)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of every case (repeatable), e.g. --set model.backbone=resnet50")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 32x64 inputs, one timed step per configuration, no compile (timings then "
                        "include first-call overheads and are not comparable)")
    p.add_argument("--out", type=Path, help="JSON report (default: benchmarks/cpu.json or benchmarks/gpu.json)")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = parser().parse_args(argv)
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        raise UserInputError(f"--device {args.device} is not a torch device: use cpu, cuda or cuda:N") from None
    if args.device.type not in DEFAULT_OUT:
        raise UserInputError(f"--device {args.device}: use cpu, cuda or cuda:N")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {args.device} requested but CUDA is not available here (use --device cpu)")
    if args.threads < 0:
        raise UserInputError(f"--threads {args.threads}: use a positive count, or 0 to leave torch's as is")
    if args.sections is None:
        with_scenarios = args.quick or args.device.type == "cuda"
        args.sections = [s for s in SECTIONS if s != "data" and (s != "scenarios" or with_scenarios)]
    if args.data and "data" not in args.sections:
        args.sections.append("data")
    args.out = args.out or DEFAULT_OUT[args.device.type]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    probe = MemoryProbe(device)
    report: dict[str, Any] = {"command": " ".join(["mtlda benchmark", *argv]), "machine": machine_info(device),
                              "load_before": load_average(), "quick": args.quick, "sections": args.sections,
                              "memory": "cuda max_memory_allocated" if device.type == "cuda" else
                              "state tensors + step peak RSS (VmHWM) above the RSS before the step",
                              "memory_note": probe.note, "comparisons": []}
    with tempfile.TemporaryDirectory(prefix="mtlda-benchmark-") as tmp, \
            environment_variable("TORCHINDUCTOR_CACHE_DIR", str(Path(tmp) / "inductor")):  # compile_s: a cold compile
        workdir = Path(tmp)
        for index, comparison in enumerate(plan(device, args.sections, args.quick)):
            print(f"{comparison.title}: {', '.join(comparison.variants)} (load {load_average()})", file=sys.stderr)
            report["comparisons"].append(run_comparison(comparison, device, probe, workdir / str(index),
                                                        args.overrides))
            write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
        if "xtam" in args.sections:
            size = QUICK_SIZE if args.quick else (256, 512)
            iters, warmup = (1, 0) if args.quick else (5, 1)
            print(f"xtam at {size[0]}x{size[1]} (load {load_average()})", file=sys.stderr)
            report["comparisons"].append(xtam_comparison(device, size, 2, iters, warmup, probe))
        if "data" in args.sections:
            print(f"data loading (load {load_average()})", file=sys.stderr)
            report["data"] = data_section(device, args.quick, workdir / "data", args.overrides)
    report["load_after"] = load_average()
    print(f"\n{report['machine']['device_name']}, {report['machine']['cpu_count']} CPUs, "
          f"{torch.get_num_threads()} torch threads, load {report['load_before']} -> {report['load_after']}")
    print(markdown_table(report["comparisons"]))
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0
