"""Two processes (gloo, CPU) equal one process at the same global batch: the real network with BatchNorm
(synchronised), the UDA discriminators, a loss-level and a gradient-level task weighting, also across a resume.

What is equal (see mtlda/distributed.py): the logged losses at every step, and the parameters and buffers after
several steps to float summation order, with ``model.sync_bn`` and ``model.aspp_dropout=0`` (each rank draws its own
dropout masks otherwise). Parameters are compared under SGD: Adam turns the ~1e-7 relative rounding differences of
gradients that are zero up to rounding into full +-lr steps, which says nothing about the synchronisation."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from mtlda.config import load_config
from mtlda.data.registry import build_dataset
from mtlda.distributed import init_distributed, shutdown_distributed
from mtlda.scenarios.dense import DenseScenario
from mtlda.errors import Interrupted
from mtlda.scenarios import scenario_class
from mtlda.scenarios.checkpoint import load_checkpoint
from mtlda.scenarios.runner import train

pytestmark = pytest.mark.slow

TINY = ["data.height=32", "data.width=64", "data.toycity.height=32", "data.toycity.width=64",
        "data.toycity.num_train=8", "data.toycity.num_val=4", "data.batch_size=4", "data.val_batch_size=4",
        "model.sync_bn=true", "model.aspp_dropout=0", "train.val_every=0", "train.image_every=0",
        "train.checkpoint_every=2", "train.log_every=1", "train.threads=1", "device=cpu", "optim.name=sgd",
        "optim.momentum=0.9", "optim.lr={backbone: 0.01, decoders: 0.01, exchange: 0.01, weighting: 0.01}",
        "uda.disc_optimizer=sgd", "uda.disc_lr=0.01", "optim.schedule=constant"]
UDA_SOURCE = ["uda.source.height=32", "uda.source.width=64", "uda.source.toycity.height=32",
              "uda.source.toycity.width=64", "uda.source.toycity.num_train=8", "uda.source.toycity.num_val=4",
              "uda.source.batch_size=4"]
CASES = {
    "supervised": ("experiments/supervised/toycity/sdn_mteb.yaml", []),
    # panels on rank 0 alone mid-run: their source depth range must not wait for the other rank (it hung before)
    "uda": ("experiments/uda/toycity/sd_mteb.yaml", [*UDA_SOURCE, "train.image_every=2"]),
    "uncertainty": ("experiments/supervised/toycity/sd_mteb.yaml", ["tasks.weighting={name: uncertainty}"]),
    "pcgrad": ("experiments/supervised/toycity/sd_none.yaml", ["tasks.weighting={name: pcgrad}"]),
}


def config(root: Path, case: str, run: str, iterations: int):
    path, extra = CASES[case]
    cache = root / "cache"
    return load_config(path, [*TINY, *extra, f"data.toycity.cache_dir={cache}",
                              f"uda.source.toycity.cache_dir={cache}", f"references.file={root / 'refs.yaml'}",
                              f"workdir={root / case / run}", f"train.iterations={iterations}"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interrupted_on_rank_0(cls: type, at: int) -> type:
    """The scenario class with a SIGINT sent to rank 0 during step ``at``: every rank must stop after it."""

    class Interrupting(cls):
        def train_step(self, batch, engine):
            if engine.iteration == at - 1 and engine.dist.rank == 0:
                os.kill(os.getpid(), signal.SIGINT)
            return super().train_step(batch, engine)

    return Interrupting


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    init_distributed("cpu")
    for case in CASES:
        train(config(Path(root), case, "ddp", 4))
        cfg = config(Path(root), case, "split", 4)
        try:
            train(cfg, scenario_type=interrupted_on_rank_0(scenario_class(cfg.scenario), at=2))
        except Interrupted:
            pass
        train(cfg, resume=True)
    shutdown_distributed()


@pytest.fixture(scope="module")
def runs(module_tmp) -> Path:
    root = module_tmp
    for case in CASES:  # data written once, before the processes start
        cfg = config(root, case, "single", 4)
        build_dataset(cfg.data, "train", train=False, tasks=["semseg"])
        if cfg.scenario == "uda":
            build_dataset(cfg.uda.source, "train", train=False, tasks=["semseg"])
    mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for case in CASES:
            train(config(root, case, "single", 4))
    finally:
        torch.set_num_threads(threads)
    return root


def assert_same_modules(a: Path, b: Path) -> None:
    """Weights equal to 1e-5. BatchNorm running statistics to 1e-4 relative: the global-batch BatchNorm reduces
    sums and sums of squares over ranks, one process a two-pass variance, and over a few steps the two float32
    formulas drift apart by up to ~3e-5 relative (measured on 1 of 512 channels in one run)."""
    left, right = load_checkpoint(a)["modules"], load_checkpoint(b)["modules"]
    assert left.keys() == right.keys()
    for module in left:
        assert left[module].keys() == right[module].keys(), module
        for key, value in left[module].items():
            rtol = 1e-4 if key.endswith(("running_mean", "running_var")) else 1e-5
            torch.testing.assert_close(right[module][key].double(), value.double(), rtol=rtol, atol=1e-5,
                                       msg=lambda text, name=f"{module}.{key}": f"{name}: {text}")


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_at_the_same_global_batch(runs, case):
    assert_same_modules(runs / case / "single" / "last.pt", runs / case / "ddp" / "last.pt")


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_across_a_resume(runs, case):
    log = (runs / case / "split" / "log.txt").read_text()
    assert "resume from iteration 2" in log  # a SIGINT on rank 0 stopped both ranks after step 2
    assert load_checkpoint(runs / case / "split" / "last.pt")["iteration"] == 4
    assert_same_modules(runs / case / "single" / "last.pt", runs / case / "split" / "last.pt")


def test_the_logged_loss_is_the_global_batch_loss(runs):
    from mtlda.runlog import read_scalars

    single = read_scalars(runs / "supervised" / "single")["train/total"]
    ddp = read_scalars(runs / "supervised" / "ddp")["train/total"]
    assert [s for s, _ in single] == [s for s, _ in ddp]
    for (_, a), (_, b) in zip(single, ddp):
        assert a == pytest.approx(b, rel=1e-4)


def _buffers_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    network, pose = nn.BatchNorm2d(3), nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    for module in (network, pose):
        module(torch.randn(4, 3, 5, 5) + 10 * rank)  # running statistics of this rank's batches
    local = {k: v.clone() for k, v in network.named_buffers()}
    scenario = SimpleNamespace(extra={"pose": pose}, weighting=nn.Module(), uses_ddp=False, model=network)
    DenseScenario.synchronise_gradients(scenario, SimpleNamespace(dist=dist))
    torch.save({"local": local, "network": dict(network.named_buffers()), "pose": dict(pose.named_buffers())},
               f"{out}/{rank}.pt")
    shutdown_distributed()


def test_modules_ddp_does_not_wrap_get_rank_0s_buffers(tmp_path):
    """UDA's network and the SDE pose net are not DDP-wrapped: without sync_bn their BatchNorm running statistics
    followed each rank's batches, so the ranks' validation shards were scored by different models."""
    mp.spawn(_buffers_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    rank0, rank1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert not torch.allclose(rank0["local"]["running_mean"], rank1["local"]["running_mean"])
    for module in ("network", "pose"):
        for key, value in rank0[module].items():
            assert torch.equal(rank1[module][key], value), f"{module}.{key}"
    assert torch.equal(rank1["network"]["running_mean"], rank0["local"]["running_mean"])
