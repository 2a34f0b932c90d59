"""Supervised scenario end to end on tiny toycity: learning beyond trivial baselines, resume, evaluate, predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mtlda.baselines import evaluate_priors, fit_priors
from mtlda.config import load_config
from mtlda.data.batch import Sample
from mtlda.data.registry import build_dataset
from mtlda.scenarios import scenario_class
from mtlda.scenarios.checkpoint import load_checkpoint
from mtlda.scenarios.engine import Engine
from mtlda.scenarios.runner import evaluate_checkpoint, train
from mtlda.scenarios.supervised import SupervisedScenario

pytestmark = pytest.mark.slow  # trains models (run the fast lane with -m 'not slow')

TINY = [
    "data.height=64", "data.width=128", "data.batch_size=8", "data.val_batch_size=16",
    "data.toycity.height=64", "data.toycity.width=128", "data.toycity.num_train=48", "data.toycity.num_val=16",
    "train.val_every=1000", "train.image_every=0", "train.log_every=5", "train.threads=2",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("toycity-cache")


def tiny_config(tmp_path: Path, cache: Path, *extra: str):
    return load_config(
        "experiments/supervised/toycity/sdn_mteb.yaml",
        [*TINY, f"data.toycity.cache_dir={cache}", f"workdir={tmp_path / 'run'}",
         f"references.file={tmp_path / 'refs.yaml'}", *extra],
    )


class ShuffledTargets(Dataset):
    """Each image paired with the targets of another image: nothing in the image predicts its labels."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        n = len(dataset)
        self.perm = (np.arange(n) + 1 + np.random.default_rng(seed).integers(n - 1)) % n

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Sample:
        sample, other = self.dataset[i], self.dataset[int(self.perm[i])]
        return Sample(sample.image, sample.K, other.targets, other.masks, sample.frames, sample.id)


class ShuffledScenario(SupervisedScenario):
    def build_split(self, data, split, train):
        dataset = super().build_split(data, split, train)
        return ShuffledTargets(dataset) if train else dataset


def margins_over_prior(cfg, scenario) -> dict[str, float]:
    """How much better than the per-pixel prior the model is (positive = better), per main metric."""
    plain = build_dataset(cfg.data, cfg.data.train_split, train=False, tasks=list(scenario.tasks))
    prior = evaluate_priors(fit_priors(plain, scenario.tasks), scenario.tasks, scenario.val_split)["pixel prior"]
    res = scenario.last_results
    return {
        "miou": res["semseg"]["miou"] - prior["semseg"]["miou"],
        "abs_rel": prior["depth"]["abs_rel"] - res["depth"]["abs_rel"],
        "normals": prior["normals"]["mean"] - res["normals"]["mean"],
    }


LEARN = ["train.iterations=120", "optim.lr.backbone=2e-3", "optim.lr.decoders=2e-3", "optim.lr.exchange=2e-3"]


def clearly_better(m: dict[str, float]) -> bool:
    return m["miou"] > 5.0 and m["abs_rel"] > 0.03 and m["normals"] > 2.0


def test_learns_beyond_pixel_prior_and_shuffled_labels_do_not(tmp_path, cache):
    cfg = tiny_config(tmp_path / "real", cache, *LEARN)
    engine, scenario, _ = train(cfg)
    real = margins_over_prior(cfg, scenario)
    cfg_shuffled = tiny_config(tmp_path / "shuffled", cache, *LEARN)
    _, control, _ = train(cfg_shuffled, scenario_type=ShuffledScenario)
    shuffled = margins_over_prior(cfg_shuffled, control)
    print(f"margins over the per-pixel prior: real {real}, shuffled labels {shuffled}")
    assert clearly_better(real), real
    assert not clearly_better(shuffled), shuffled


def test_resume_evaluate_and_loss_decreases(tmp_path, cache):
    cfg = tiny_config(tmp_path, cache, "train.iterations=4", "train.checkpoint_every=2")
    engine, scenario, _ = train(cfg)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 4
    longer = tiny_config(tmp_path, cache, "train.iterations=8", "train.checkpoint_every=2")
    engine, scenario, _ = train(longer, resume=True, allow_changed=["train.iterations"])
    assert engine.iteration == 8
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["iteration"] == 8 and set(ckpt["optimizers"]) == {"model"}
    assert ckpt["metadata"]["tasks"]["semseg"]["code"] == "S" and len(ckpt["metadata"]["class_names"]) == 9
    engine, evaluated = evaluate_checkpoint(longer, str(tmp_path / "run" / "last.pt"))
    again = evaluated.evaluate_tasks(engine)
    assert again["semseg"]["miou"] == pytest.approx(scenario.last_results["semseg"]["miou"])
    assert again["depth"]["rmse"] == pytest.approx(scenario.last_results["depth"]["rmse"], rel=1e-5)
    assert (tmp_path / "run" / "config.yaml").is_file() and any((tmp_path / "run" / "tb").iterdir())


def test_training_loss_decreases(tmp_path, cache):
    cfg = tiny_config(tmp_path, cache, "train.iterations=30", "train.log_every=1")
    losses = []

    class Recording(SupervisedScenario):
        def train_step(self, batch, engine):
            out = super().train_step(batch, engine)
            losses.append(float(out.loss))
            return out

    train(cfg, scenario_type=Recording)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_experiment_files_parse_and_build(tmp_path):
    files = sorted(Path("experiments").glob("*/*/*.yaml"))
    assert len(files) > 60
    for path in files:
        cfg = load_config(path, ["model.pretrained=none", f"workdir={tmp_path}"])
        with torch.device("meta"):
            engine = Engine(cfg, tmp_path, torch.device("meta"), show_progress=False)
            scenario_class(cfg.scenario)(cfg, engine, train=False, with_data=False)


def test_predict_writes_outputs_of_the_input_size(tmp_path, cache, monkeypatch, capsys):
    import runpy
    import sys

    import cv2

    cfg = tiny_config(tmp_path, cache, "train.iterations=1")
    train(cfg)
    image = (np.random.default_rng(0).random((77, 131, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "odd.png"), image)
    out = tmp_path / "pred"
    monkeypatch.setattr(sys, "argv", ["predict.py", str(tmp_path / "run" / "last.pt"), str(tmp_path / "odd.png"),
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path("scripts/predict.py", run_name="__main__")
    assert stop.value.code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"odd_{task}.{ext}" for task in ("depth", "normals", "semseg") for ext in ("npy", "png")]
    for name in names:
        path = out / name
        array = np.load(path) if name.endswith(".npy") else cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert array.shape[-2:] == (77, 131) if name == "odd_normals.npy" else array.shape[:2] == (77, 131), name
    assert (np.load(out / "odd_depth.npy") > 0).all()
    assert np.allclose(np.linalg.norm(np.load(out / "odd_normals.npy"), axis=0), 1, atol=1e-4)
