"""Multi-process training under ``torchrun`` (NCCL on GPUs, gloo on CPUs): process group, devices, global batches,
exact global reductions, synchronised BatchNorm on every backend, and clean teardown.

What is equal to one process at the same global batch (tested): with ``model.sync_bn`` (BatchNorm statistics over
the global batch, also on CPUs) and losses normalised by global counts (:func:`global_denominator`, used by every
masked mean), the gradients, the updated parameters and the logged losses equal the single-process ones up to
floating-point summation order. Not equal: dropout masks (each rank draws its own), and BatchNorm statistics
without ``sync_bn`` (per-rank batches).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn

from mtlda.errors import MtldaError, UserInputError


class PeerFailure(MtldaError, RuntimeError):
    """Another process of the run died or stopped answering (under torchrun)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_rank_local_depth = 0


def is_distributed() -> bool:
    """Whether collectives run: a process group of several ranks, outside :func:`rank_local`."""
    return (_rank_local_depth == 0 and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


@contextmanager
def rank_local() -> Iterator[None]:
    """Inside it this process reduces over itself only: for work one rank does alone (image panels), whose
    statistics (e.g. the source depth range) would otherwise wait for collectives the other ranks never join."""
    global _rank_local_depth
    _rank_local_depth += 1
    try:
        yield
    finally:
        _rank_local_depth -= 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (a no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return DistInfo(rank, world, local)


def shutdown_distributed() -> None:
    """Wait for every rank, then leave the process group (so no rank exits while peers still talk to it)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` is CUDA when available (the local rank's GPU under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError("device 'cuda' was requested but no CUDA GPU is visible (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", info.local_rank)
        elif device.index >= torch.cuda.device_count():
            raise UserInputError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def local_batch_size(global_batch: int, world: int, what: str = "data.batch_size") -> int:
    """This rank's share of a global batch; a global batch that does not divide by the world size is an error."""
    if global_batch % world:
        raise UserInputError(
            f"{what} {global_batch} is the global batch and must divide by the {world} processes of the run; "
            f"use a multiple of {world}"
        )
    return global_batch // world


AUTO_WORKERS = -1
MAX_AUTO_WORKERS = 8
MIN_CORES_FOR_WORKERS = 4


def loader_workers(requested: int) -> int:
    """DataLoader workers of this process for ``data.workers``: the count itself, or for ``-1`` (auto) the CPU cores
    this process may use, shared among the ranks on this machine (torchrun's LOCAL_WORLD_SIZE), less the one that
    trains, at most 8; none below MIN_CORES_FOR_WORKERS cores per rank (``mtlda benchmark --data`` on 2 cores: a
    worker competes with the step's threads and the step runs at 0.38x, while loading in the main process costs 6 %)."""
    if requested != AUTO_WORKERS:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    per_rank = cores // local_ranks
    return 0 if per_rank < MIN_CORES_FOR_WORKERS else min(MAX_AUTO_WORKERS, per_rank - 1)


def ddp_options(device: torch.device) -> dict[str, Any]:
    """How the network is wrapped in DistributedDataParallel (NCCL on GPUs, gloo on CPUs), every setting explicit:

    - ``device_ids``: the rank's GPU (None on CPUs: the module's own device);
    - ``find_unused_parameters=False``: every parameter of the wrapped network gets a gradient at every step (each
      head is supervised; modules outside a step's graph, UDA's discriminators and SDE's pose net, are not wrapped),
      so DDP does not traverse the autograd graph after each forward;
    - ``static_graph=True``: the parameters used and the order in which their gradients become ready are the same
      at every step (no iteration-dependent control flow; validation runs the unwrapped module), so DDP records
      them in the first iteration and buckets gradients in that order (it also supports activation checkpointing,
      ``model.checkpointing``, in every form);
    - ``gradient_as_bucket_view=True``: the .grad tensors are views into the all-reduce buckets, which saves one copy
      of the gradients (the size of the network); valid because nothing replaces or detaches a .grad before the
      optimiser (clipping and AMP unscaling work in place, zero_grad sets them to None);
    - ``bucket_cap_mb=25`` (torch's default): about ten buckets for the paper's ResNet-101 S-D, so communication
      overlaps the backward pass.

    Buffers keep torch's default: BatchNorm running statistics follow rank 0's at every forward (with
    ``model.sync_bn`` they are the same on every rank anyway); the flag is not passed because its name changes
    across the supported torch versions (``broadcast_buffers``, deprecated in 2.14 for ``forward_sync_buffers``).
    """
    return {"device_ids": [device.index] if device.type == "cuda" else None, "find_unused_parameters": False,
            "static_graph": True, "gradient_as_bucket_view": True, "bucket_cap_mb": 25}


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` for one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _collective_device(t: Tensor) -> Tensor:
    return t.cuda() if dist.get_backend() == "nccl" and t.device.type != "cuda" else t


def global_denominator(count: Tensor) -> Tensor:
    """The local denominator of a mean over the global batch: (sum of ``count`` over ranks) / world size.

    ``local_sum / global_denominator(local_count)`` averaged over ranks (as DDP averages gradients) is exactly
    the mean over the global batch. One process: ``count`` itself. No gradient flows through counts.
    """
    count = count.detach().to(torch.float64)
    if not is_distributed():
        return count
    total = _collective_device(count.clone())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(count.device) / dist.get_world_size()


def global_max(value: Tensor) -> Tensor:
    """The maximum of a 0-dim tensor over ranks (detached)."""
    value = value.detach()
    if not is_distributed():
        return value
    out = _collective_device(value.clone())
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out.to(value.device)


def global_min(value: Tensor) -> Tensor:
    return -global_max(-value)


def all_reduce_mean(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The rank average of each tensor (one flattened all_reduce; the inputs are left unchanged)."""
    if not tensors:
        return []
    if not is_distributed():
        return [t.clone() for t in tensors]
    flat = _collective_device(torch.cat([t.detach().reshape(-1).double() for t in tensors]))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.to(tensors[0].device) / dist.get_world_size()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape).to(t.dtype))
        start += t.numel()
    return out


def average_gradients_(parameters: Iterable[nn.Parameter]) -> None:
    """Replace every ``.grad`` by its average over ranks (one flattened all_reduce; params without grad get zeros
    if another rank has one, so every rank makes the same call)."""
    params = [p for p in parameters if p.requires_grad]
    if not params or not is_distributed():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for param, grad, mean in zip(params, grads, all_reduce_mean(grads)):
        param.grad = grad.copy_(mean)  # in place: the parameter's memory format (fused optimisers assume it)


def broadcast_buffers_(modules: Iterable[nn.Module]) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics, spectral-norm vectors), in place, one
    broadcast per dtype: what DistributedDataParallel does for the modules it wraps, for those it does not. Without
    it each rank's running statistics follow its own batches, and the ranks' validation shards are scored by
    models that differ from the saved one."""
    if not is_distributed():
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for buffer in (b for module in modules for b in module.buffers()):
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for dtype in sorted(by_dtype, key=str):
        buffers = by_dtype[dtype]
        flat = _collective_device(torch.cat([b.detach().reshape(-1) for b in buffers]))
        dist.broadcast(flat, src=0)
        start = 0
        for b in buffers:
            b.copy_(flat[start:start + b.numel()].reshape(b.shape))
            start += b.numel()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks, on any backend.

    The per-channel sum, sum of squares and count are all-reduced with the differentiable
    ``torch.distributed.nn.functional.all_reduce``, so gradients flow to every rank's inputs exactly as if one
    process saw the whole batch. Outside training or without a process group it is a plain BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        channels = x.shape[1]
        stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)),
                           x.new_tensor([x.numel() / channels])])
        stats = dist_nn.all_reduce(_collective_device(stats)).to(x.device)
        count = stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels:2 * channels] / count - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            unbiased = var.detach() * count / (count - 1).clamp_min(1)
            self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        shape = (1, channels, 1, 1)
        out = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        return out * self.weight.reshape(shape) + self.bias.reshape(shape) if self.affine else out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm2d replaced by :class:`GlobalBatchNorm2d` (weights and buffers kept)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        converted = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module


PEER_FAILURE_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe",
                        "gloo", "nccl", "socket", "timed out", "connectfullmesh")


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank died or hung (under torchrun)."""
    if not is_distributed():
        return False
    if isinstance(error, getattr(dist, "DistBackendError", ())) or isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(marker in text for marker in PEER_FAILURE_MARKERS)
