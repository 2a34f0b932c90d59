"""Forward+backward time per iteration and peak memory of named model configurations, side by side in one process.

Examples::

    python scripts/benchmark.py --quick                       # < 1 minute smoke test on a CPU
    python scripts/benchmark.py --device cuda --iters 20      # the paper's sizes on a GPU
    python scripts/benchmark.py --configs xtam_sdpa xtam_explicit --xtam-size 128 256

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during the iterations; on CPU the process's peak
resident set size (VmHWM, reset through /proc/self/clear_refs before each configuration where Linux allows it).
"extra" is that peak minus the memory in use just before the iterations (model, optimiser-free, inputs).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

from mtlda.config import load_config
from mtlda.models import XTAM, HeadSpec, build_network
from mtlda.schema import ModelConfig


@dataclass(frozen=True)
class NetworkCase:
    """A full network trained on random images."""

    description: str
    backbone: str
    tasks: tuple[str, ...]
    size: tuple[int, int]
    block: str = "mteb"
    quick_size: tuple[int, int] = (32, 64)
    experiment: str = ""  # model settings from this experiment file (else the paper's defaults)


@dataclass(frozen=True)
class XTAMCase:
    """One directional xTAM on stage-1 features (default: a 512x1024 input -> (B, 128, 256, 512), 8192 tokens)."""

    description: str
    use_sdpa: bool
    channels: int = 128
    downscale: int = 4
    quick_size: tuple[int, int] = (32, 64)


HEAD_CHANNELS = {"semseg": 16, "depth": 1, "normals": 3, "edges": 1}
CASES: dict[str, NetworkCase | XTAMCase] = {
    "paper_sd": NetworkCase("paper S-D, ResNet-101, mTEB at stage 1", "resnet101", ("semseg", "depth"), (256, 512)),
    "paper_sdn": NetworkCase(
        "paper S-D-N, ResNet-101, mTEB at stage 1", "resnet101", ("semseg", "depth", "normals"), (256, 512)
    ),
    "demo_sdn_mteb": NetworkCase(
        "demo S-D-N, ResNet-18, mTEB (the toycity demo model)", "resnet18", ("semseg", "depth", "normals"),
        (128, 256), "mteb", experiment="experiments/supervised/toycity/sdn_mteb.yaml",
    ),
    "demo_sdn_none": NetworkCase(
        "demo S-D-N, ResNet-18, no exchange", "resnet18", ("semseg", "depth", "normals"), (128, 256), "none",
        experiment="experiments/supervised/toycity/sdn_none.yaml",
    ),
    "xtam_sdpa": XTAMCase("xTAM alone, scaled_dot_product_attention", use_sdpa=True),
    "xtam_explicit": XTAMCase("xTAM alone, explicit softmax(QK^T)V", use_sdpa=False),
}


@dataclass
class Result:
    name: str
    description: str
    shape: str
    status: str = "ok"
    parameters: int = 0
    ms_per_iter: float | None = None
    ms_all: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    extra_mb: float | None = None


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_freed_cpu_memory() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim) so that the next RSS peak starts from live memory."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


class MemoryProbe:
    """Peak memory of a code region: CUDA allocator peak, or the CPU process's peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.note = ""
        if device.type != "cuda":
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.note = "peak RSS could not be reset: it is the process peak so far"

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            _release_freed_cpu_memory()
            if not self.note:
                Path("/proc/self/clear_refs").write_text("5")
            self.before = (_proc_status_kb("VmRSS") or 0) * 1024

    def peak(self) -> tuple[float, float]:
        """(peak MiB, peak minus the memory in use at start() MiB)."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = (_proc_status_kb("VmHWM") or 0) * 1024
        return peak / 2**20, (peak - self.before) / 2**20


def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text


def _network_step(case: NetworkCase, size: tuple[int, int], batch: int, device: torch.device):
    if case.experiment:
        cfg = load_config(Path(__file__).resolve().parents[1] / case.experiment).model
    else:
        cfg = ModelConfig(backbone=case.backbone, block=case.block, stages=[1])
    heads = {task: HeadSpec(HEAD_CHANNELS[task], (0, 1)) for task in case.tasks}
    model = build_network(cfg, heads).to(device).train()
    image = torch.rand(batch, 3, *size, device=device)

    def step() -> None:
        predictions = model(image)
        sum(p.float().mean() for p in predictions.values()).backward()

    return model, step, f"{batch}x3x{size[0]}x{size[1]}"


def _xtam_step(case: XTAMCase, size: tuple[int, int], batch: int, device: torch.device):
    model = XTAM(case.channels, case.downscale, use_sdpa=case.use_sdpa).to(device).train()
    with torch.no_grad():
        model.alpha.fill_(0.1)
    target = torch.randn(batch, case.channels, *size, device=device)
    source = torch.randn(batch, case.channels, *size, device=device)

    def step() -> None:
        model(target, source).mean().backward()

    tokens = (size[0] // case.downscale) * (size[1] // case.downscale)
    return model, step, f"{batch}x{case.channels}x{size[0]}x{size[1]} ({tokens} tokens)"


def _time(step: Callable[[], None], model: torch.nn.Module, iters: int, warmup: int, device: torch.device):
    times = []
    for index in range(warmup + iters):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


def run_case(name: str, args: argparse.Namespace, device: torch.device, probe: MemoryProbe) -> Result:
    case = CASES[name]
    result = Result(name, case.description, "")
    model = step = None
    try:
        if isinstance(case, NetworkCase):
            size = case.quick_size if args.quick else case.size
            model, step, result.shape = _network_step(case, size, args.batch, device)
        else:
            size = case.quick_size if args.quick else tuple(args.xtam_size)
            model, step, result.shape = _xtam_step(case, size, args.batch, device)
        result.parameters = sum(p.numel() for p in model.parameters())
        probe.start()
        result.ms_all = _time(step, model, args.iters, args.warmup, device)
        result.ms_per_iter = statistics.median(result.ms_all)
        result.peak_mb, result.extra_mb = probe.peak()
    except (RuntimeError, MemoryError) as error:
        if not _is_oom(error) and not isinstance(error, MemoryError):
            raise
        result.status = "OOM"
    finally:
        del model, step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def machine_info(device: torch.device) -> dict[str, object]:
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model,
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown_table(results: list[Result]) -> str:
    rows = [
        "| config | description | input | params | ms/iter (median) | peak MiB | extra MiB | status |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        rows.append(
            f"| {r.name} | {r.description} | {r.shape} | {r.parameters:,} | {_fmt(r.ms_per_iter, 1)} | "
            f"{_fmt(r.peak_mb)} | {_fmt(r.extra_mb)} | {r.status} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--configs", nargs="+", metavar="NAME",
                        help=f"configurations to run, in order: {', '.join(CASES)} (default: all; with --quick "
                        f"all but the ResNet-101 ones)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per configuration (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default: 1)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    parser.add_argument("--xtam-size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"),
                        help="stage-1 feature size of the xTAM cases (default: 256 512, i.e. a 512x1024 input)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU (0: leave as is)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny sizes (networks at 32x64, xTAM at 32x64), no warm-up, 1 iteration; "
                        "timings then include first-call overhead and are not comparable")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/latest.json"), help="JSON file to write")
    args = parser.parse_args(argv)
    if args.configs is None:
        args.configs = [n for n in CASES if not (args.quick and n.startswith("paper_"))]
    unknown = [name for name in args.configs if name not in CASES]
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.iters < 1 or args.warmup < 0 or args.batch < 2:
        parser.error("--iters must be >= 1, --warmup >= 0 and --batch >= 2 (BatchNorm in training mode)")
    if args.xtam_size[0] % 4 or args.xtam_size[1] % 4:
        parser.error(f"--xtam-size {args.xtam_size[0]} {args.xtam_size[1]}: both must be multiples of 4 (xTAM pooling)")
    if args.quick:
        args.iters, args.warmup = 1, 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"benchmark: --device {args.device} is not a torch device (use cpu, cuda or cuda:N)", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"benchmark: --device {args.device} requested but CUDA is not available here", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    probe = MemoryProbe(device)
    results = []
    for name in args.configs:
        results.append(run_case(name, args, device, probe))
        print(f"{name}: {results[-1].status} {_fmt(results[-1].ms_per_iter, 1)} ms/iter", file=sys.stderr)
    info = machine_info(device)
    print(f"\n{info['device_name']}, {info['cpu_count']} CPUs, {info['torch_threads']} torch threads, "
          f"torch {info['torch']}" + (f" ({probe.note})" if probe.note else ""))
    print(markdown_table(results))
    report = {
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS (VmHWM)",
        "memory_note": probe.note,
        "results": [vars(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
