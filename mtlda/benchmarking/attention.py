"""One directional xTAM alone: scaled_dot_product_attention against the explicit softmax(QK^T)V, and which SDPA
kernels run."""

from __future__ import annotations

import contextlib
import statistics
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from mtlda.benchmarking.measure import MemoryProbe, load_average, timed
from mtlda.models import XTAM


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
