"""Balanced training under DDP (2 gloo processes on the CPU, each on one half of a fixed batch) equals one process
on the whole batch, for a gradient-level method (PCGrad through ``weighted_backward``) and a loss-level one
(uncertainty, with its log-variances' gradients all-reduced)."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mtlda.distributed import shutdown_distributed
from mtlda.weighting import all_reduce_mean_, build_weighting, rank_mean_losses, weighted_backward

pytestmark = pytest.mark.slow  # trains models (run the fast lane with -m 'not slow')

TASKS = ("a", "b")
METHODS = ("pcgrad", "uncertainty")
BATCH = 8
STEPS = 4


class _SharedTrunkTwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        return {t: self.heads[t](features).squeeze(1) for t in TASKS}


def _half_batch(rank: int, world: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, generator=generator, dtype=torch.float64)
    targets = {"a": x.sum(1), "b": x[:, 0] ** 2 - x.sum(1)}  # pull the trunk in conflicting directions
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    return x[part], {t: v[part] for t, v in targets.items()}


def _train(name: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    """STEPS of SGD with method ``name`` on this rank's part of the batch; the final model and method state."""
    torch.manual_seed(0)
    net = _SharedTrunkTwoHeads().double()
    method = build_weighting(name, TASKS, dict.fromkeys(TASKS, 1.0)).double()
    model = DistributedDataParallel(net) if world > 1 else net
    optimizer = torch.optim.SGD([*net.parameters(), *method.parameters()], lr=0.2)
    x, targets = _half_batch(rank, world)
    for _ in range(STEPS):
        optimizer.zero_grad()
        if method.level == "gradient":
            with model.no_sync() if world > 1 else contextlib.nullcontext():
                outputs = model(x)
                losses = {t: ((outputs[t] - targets[t]) ** 2).mean() for t in TASKS}
                weighted_backward(method, losses, list(net.trunk.parameters()), list(net.heads.parameters()))
        else:
            outputs = model(x)
            losses = {t: ((outputs[t] - targets[t]) ** 2).mean() for t in TASKS}
            method.combine_losses(losses).backward()
            all_reduce_mean_([p.grad for p in method.parameters()])
        optimizer.step()
        method.after_step(rank_mean_losses(losses))
    state = {f"net.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    return state | {f"method.{k}": v.detach().clone() for k, v in method.state_dict().items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save({name: _train(name, rank, world) for name in METHODS}, f"{out}.{rank}")
    finally:
        shutdown_distributed()  # a barrier first: no rank tears gloo down while its peer still talks to it


def test_two_ranks_on_halves_equal_one_process_on_the_whole_batch(tmp_path, one_thread):
    out = str(tmp_path / "ranks")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2)
    ranks = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]
    for name in METHODS:
        single = _train(name, 0, 1)
        for rank in ranks:
            assert rank[name].keys() == single.keys()
            for key, value in single.items():
                torch.testing.assert_close(rank[name][key], value, rtol=0, atol=1e-6, msg=f"{name} {key}")
    plain = _train("fixed", 0, 1)
    projected = _train("pcgrad", 0, 1)
    assert not torch.allclose(plain["net.trunk.0.weight"], projected["net.trunk.0.weight"])  # PCGrad projected
    assert not torch.allclose(ranks[0]["uncertainty"]["method.log_variances"], torch.zeros(2, dtype=torch.float64))
