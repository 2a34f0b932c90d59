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
- ``scenarios`` (CUDA): the supervised, UDA and SDE training steps of the paper's experiments at their resolution;
- ``release`` (``--against REV``): the demo's whole training step in this source tree against git revision REV's,
  each run by its own tree's ``scripts/supervised.py`` in fresh processes (short and long runs alternating between
  the trees; the difference of their wall times per step: data, normals, loss, backward, optimiser and logging
  included, start-up and the final validation left out), e.g. against the first release to measure what the speed
  work changed as a user sees it.

Memory: the case's parameters, buffers and optimiser state (counted from its tensors) plus the step's own peak of
tensor memory above what was allocated just before it: ``torch.cuda.max_memory_allocated`` on CUDA; on a CPU the
running sum of torch.profiler's allocation events over one more step after the timed rounds (exact and repeatable).
The CPU rows also keep each timed step's peak resident set above the one before it (``step_rss_mib``: VmHWM, reset
through /proc/self/clear_refs after returning freed heap pages with malloc_trim), which also counts the heap's free
but unreturned pages and varies from run to run by more than the options' effects.

examples:
  mtlda benchmark --data                          # every CPU comparison -> benchmarks/cpu.json (20-40 min, 2 cores)
  mtlda benchmark --device cuda --data            # the same plus AMP fp16 and the scenarios -> benchmarks/gpu.json
  mtlda benchmark --quick --sections options      # smoke test at 32x64 (a minute)
  mtlda benchmark --sections release --against 6290ddf --out benchmarks/cpu_release.json   # vs the first release
"""


from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision

from mtlda.benchmarking.attention import xtam_comparison
from mtlda.benchmarking.cases import run_comparison
from mtlda.benchmarking.loading import data_section
from mtlda.benchmarking.measure import MemoryProbe, environment_variable, load_average
from mtlda.benchmarking.plan import QUICK_SIZE, plan
from mtlda.benchmarking.release import release_comparison
from mtlda.errors import UserInputError
from mtlda.scenarios.checkpoint import source_commit
from mtlda.files import write_text_atomic

SECTIONS = ("options", "paper", "weighting", "xtam", "scenarios", "data", "release")
DEFAULT_OUT = {"cpu": Path("benchmarks/cpu.json"), "cuda": Path("benchmarks/gpu.json")}


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
                   help=f"comparisons to run, among {', '.join(SECTIONS)} (default: all but data and release; "
                        "scenarios on CUDA and with --quick only)")
    p.add_argument("--data", action="store_true", help="add the data section (loader images/s, data.workers)")
    p.add_argument("--against", metavar="REV",
                   help="add the release section: the demo's training step of this git checkout against revision "
                        "REV's (a commit, tag or branch), from each one's own code")
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
        args.sections = [s for s in SECTIONS if s not in ("data", "release") and (s != "scenarios" or with_scenarios)]
    if args.data and "data" not in args.sections:
        args.sections.append("data")
    if args.against and "release" not in args.sections:
        args.sections.append("release")
    if "release" in args.sections and not args.against:
        raise UserInputError("the release section compares against a git revision: add --against REV "
                             "(e.g. --against 6290ddf, the first release)")
    args.out = args.out or DEFAULT_OUT[args.device.type]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    probe = MemoryProbe(device)
    report: dict[str, Any] = {"command": " ".join(["mtlda benchmark", *argv]), "source_commit": source_commit(),
                              "machine": machine_info(device),
                              "load_before": load_average(), "quick": args.quick, "sections": args.sections,
                              "memory": "cuda max_memory_allocated" if device.type == "cuda" else
                              "state tensors + step peak of allocated tensors (torch.profiler memory events); "
                              "step_rss_mib: peak RSS (VmHWM) above the RSS before each timed step",
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
        if "release" in args.sections:
            print(f"release: against {args.against} (load {load_average()})", file=sys.stderr)
            report["release"] = release_comparison(args.against, workdir / "release", args.quick,
                                                   1 if args.quick else 3, args.overrides, str(device), args.threads)
    report["load_after"] = load_average()
    print(f"\n{report['machine']['device_name']}, {report['machine']['cpu_count']} CPUs, "
          f"{torch.get_num_threads()} torch threads, load {report['load_before']} -> {report['load_after']}")
    print(markdown_table(report["comparisons"]))
    if "release" in report:
        release = report["release"]
        print(f"\ntraining step: {release['ms_per_step']['current']:,.0f} ms here, "
              f"{release['ms_per_step']['reference']:,.0f} ms at {args.against}: ratio {release['ratio']:.2f}")
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0
