"""The extension points: a fifth task and an exchange block, each defined in its own module (tests/toy_extensions.py)
without editing mtlda, train end to end in all three scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlda.config import load_config
from mtlda.data.registry import build_dataset
from mtlda.scenarios.runner import train

import toy_extensions  # noqa: F401  (registers the task, its target reader and the block)

pytestmark = pytest.mark.slow

SIZE = ["height=32", "width=64", "toycity.height=32", "toycity.width=64", "toycity.num_train=8",
        "toycity.num_val=4", "batch_size=4"]
COMMON = ["train.val_every=0", "train.image_every=2", "train.checkpoint_every=0", "train.threads=1",
          "tasks.names=[S, H]", "model.block=gate"]


def config(tmp: Path, experiment: str, run: str, *extra: str):
    sets = [f"data.{s}" for s in SIZE] + [f"data.toycity.cache_dir={tmp / 'cache'}", f"workdir={tmp / run}",
                                           f"references.file={tmp / 'refs.yaml'}", *COMMON, *extra]
    return load_config(Path("experiments") / experiment, sets)


@pytest.fixture(scope="module")
def tmp(module_tmp):
    threads = torch.get_num_threads()
    yield module_tmp
    torch.set_num_threads(threads)


def check(scenario, tasks: set[str], panels: set[str] = frozenset()) -> None:
    """The toy task was scored, the toy block built, and the image panels (every 2 steps) written as PNG files."""
    results = scenario.last_results
    assert set(results) == tasks
    assert results["elevation"]["mae"] > 0 and results["semseg"]["miou"] >= 0
    assert "gate" in type(next(iter(scenario.model.exchange.values()))).__name__.lower()
    written = {p.stem: p.stat().st_size for p in (Path(scenario.cfg.workdir) / "panels").glob("*.png")}
    assert set(written) == {"val_predictions", *panels} and min(written.values()) > 1000


def test_the_elevation_target_is_the_height_above_the_road(tmp):
    cfg = config(tmp, "supervised/toycity/sd_mteb.yaml", "data")
    sample = build_dataset(cfg.data, "val", train=False, tasks=["elevation"])[0]
    elevation, mask = sample.targets["elevation"][0], sample.masks["elevation"][0]
    bottom = elevation[-3:][mask[-3:]]  # the road in front of the car
    assert bottom.abs().max() < 0.2 and elevation[mask].max() > 2.0


def test_a_fifth_task_and_a_new_block_train_in_the_supervised_scenario(tmp):
    _, scenario, _ = train(config(tmp, "supervised/toycity/sd_mteb.yaml", "supervised", "train.iterations=2"))
    check(scenario, {"semseg", "elevation"})


def test_a_fifth_task_and_a_new_block_train_in_the_uda_scenario(tmp):
    source = [f"uda.source.{s}" for s in SIZE] + [f"uda.source.toycity.cache_dir={tmp / 'cache'}"]
    _, scenario, _ = train(config(tmp, "uda/toycity/sd_mteb.yaml", "uda", "train.iterations=2", *source))
    check(scenario, {"semseg", "elevation"}, {"train_adaptation"})
    assert {"elevation_s0", "semseg_s0"} <= set(scenario.extra["discriminators"])


def test_a_fifth_task_and_a_new_block_train_in_the_sde_scenario(tmp):
    pretrain = config(tmp, "sde/toycity/pretrain.yaml", "pretrain", "train.iterations=1")
    train(pretrain)
    multitask = config(tmp, "sde/toycity/sd_mteb.yaml", "sde", "train.iterations=2",
                       f"sde.init_from={tmp / 'pretrain' / 'last.pt'}")
    _, scenario, _ = train(multitask)
    check(scenario, {"semseg", "elevation", "disp"}, {"train_photometric"})
