"""Measuring: wall time with device work included, peak memory of a region (CUDA allocator or CPU peak RSS; on a CPU
also the allocator's peak from the profiler's allocation events), the bytes of a training state, the load average."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from mtlda.scenarios.dense import DenseScenario
from mtlda.scenarios.engine import Engine


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


def cpu_allocated_peak_bytes(fn: Callable[[], object], lead_in: Callable[[], object] | None = None) -> int:
    """Peak bytes of tensor memory allocated on the CPU while ``fn`` runs, above what was allocated at its start.

    The running sum, in time order, of the allocation and free events that ``torch.profiler`` records
    (``profile_memory``) while ``fn`` runs: exact and repeatable, where the resident set also counts the heap's free
    but unreturned pages. The profiler knows the size of the blocks allocated while it runs only, so ``lead_in``
    (e.g. the previous training step) runs inside it first: what ``fn`` frees of its blocks is counted."""
    from torch.profiler import DeviceType, ProfilerActivity, profile, record_function

    window = "mtlda.benchmark.measured_region"
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if lead_in is not None:
            lead_in()
        gc.collect()
        with record_function(window):
            fn()
    events = prof.profiler.kineto_results.events()
    region = next(e for e in events if e.name() == window)
    memory = sorted((e for e in events if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
                     and region.start_ns() <= e.start_ns() <= region.end_ns()), key=lambda e: e.start_ns())
    held = peak = 0
    for event in memory:
        held += event.nbytes()
        peak = max(peak, held)
    return peak


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


def is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text \
        or "can't allocate" in text


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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



def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
