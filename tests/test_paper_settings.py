"""The paper's settings, pinned: every paper experiment's resolved config against one table (paper section 4.1,
appendix B; the official code's values where the paper is silent), the model-selection scale (official bug B8) and
the fixed splits."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch

from mtlda.config import load_config
from mtlda.data.batch import Batch
from mtlda.data.vkitti2 import VKITTI2Dataset, split_frames
from mtlda.scenarios.dense import input_size
from mtlda.scenarios.evaluation import evaluate
from mtlda.tasks import SemsegTask, task_weights

EXPERIMENTS = Path(__file__).resolve().parents[1] / "mtlda" / "experiments"
ADAM_OURS = ("adam", (0.9, 0.98), {"backbone": 2e-4, "decoders": 3e-4, "exchange": 3e-4})
SGD_BASELINES = ("sgd", None, {"backbone": 1e-3, "decoders": 1e-2, "exchange": 1e-2})
SIZES = {"cityscapes": (512, 1024), "synthia": (512, 1024), "vkitti2": (320, 1024), "nyudv2": (448, 576)}
CLASSES = {"cityscapes": 16, "synthia": 16, "vkitti2": 14, "nyudv2": 40}
WEIGHTS = {"sd": {"semseg": 50, "depth": 1}, "sdn": {"semseg": 100, "depth": 1, "normals": 100},
           "sdne": {"semseg": 100, "depth": 1, "normals": 100, "edges": 50}}
OPTIMISER = {"mteb": ADAM_OURS, "none": ADAM_OURS, "mtl": SGD_BASELINES, "padnet": SGD_BASELINES,
             "padnet-original": SGD_BASELINES, "stl": SGD_BASELINES, "stl-3ways": SGD_BASELINES}
ARCHITECTURE = {"mteb": ("3ways", "mteb", [1]), "none": ("3ways", "none", None), "mtl": ("deeplab", "none", None),
                "padnet": ("3ways", "padnet", [2]), "padnet-original": ("padnet", "padnet", None),
                "stl": ("deeplab", "none", None), "stl-3ways": ("3ways", "none", None)}


def supervised_files():
    for dataset in SIZES:
        for path in sorted((EXPERIMENTS / "supervised" / dataset).glob("*.yaml")):
            yield pytest.param(dataset, path, id=f"{dataset}/{path.stem}")


def check_common(cfg) -> None:
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.model.dilation) == ("resnet101", "imagenet",
                                                                              [False, False, True])
    assert cfg.model.input_norm == "monodepth"
    assert (cfg.tasks.depth_inv_scale, cfg.tasks.depth_inv_offset) == (655.36, 0.01)
    assert cfg.tasks.depth_protocol.per_image and (cfg.tasks.depth_protocol.min_depth,
                                                   cfg.tasks.depth_protocol.max_depth) == (1e-3, 80.0)


@pytest.mark.parametrize("dataset, path", list(supervised_files()))
def test_supervised_paper_experiments(dataset, path):
    cfg = load_config(path)
    codes, _, variant = path.stem.partition("_")
    check_common(cfg)
    assert cfg.scenario == "supervised" and cfg.data.dataset == dataset
    assert input_size(cfg.data, train=True) == SIZES[dataset] == input_size(cfg.data, train=False)
    assert cfg.data.classes == CLASSES[dataset] and cfg.data.batch_size == 2
    assert (cfg.train.iterations, cfg.optim.schedule, cfg.optim.step_at, cfg.optim.gamma, cfg.optim.grad_clip) == (
        40000, "step", [30000], 0.1, 10.0)
    name, betas, lr = OPTIMISER[variant]
    assert cfg.optim.name == name and cfg.optim.lr == lr
    if name == "adam":
        assert tuple(cfg.optim.betas) == betas and cfg.optim.weight_decay == 0
    else:
        assert (cfg.optim.momentum, cfg.optim.weight_decay) == (0.9, 5e-4)
    architecture, block, stages = ARCHITECTURE[variant]
    assert (cfg.model.architecture, cfg.model.block) == (architecture, block)
    if stages is not None:
        assert cfg.model.stages == stages
    if architecture == "deeplab":
        assert cfg.model.aspp_rates == [12, 24, 36] and cfg.model.scales == [0]
    if len(codes) > 1:
        assert task_weights(cfg.tasks) == WEIGHTS[codes]
        assert cfg.references.kind == "stl" and not cfg.references.is_reference
    else:
        assert cfg.references.is_reference and cfg.references.kind == ("stl" if variant == "stl" else "stl-3ways")
    if dataset == "vkitti2":
        assert cfg.data.variation == "15-deg-left"


def uda_files():
    for pair in ("synthia2cityscapes", "vkitti2cityscapes"):
        for path in sorted((EXPERIMENTS / "uda" / pair).glob("*.yaml")):
            yield pytest.param(pair, path, id=f"{pair}/{path.stem}")


@pytest.mark.parametrize("pair, path", list(uda_files()))
def test_uda_paper_experiments(pair, path):
    cfg = load_config(path)
    check_common(cfg)
    assert input_size(cfg.data, train=False) == (512, 1024) and cfg.data.dataset == "cityscapes"
    assert cfg.data.classes == cfg.uda.source.classes == (16 if pair.startswith("synthia") else 8)
    assert cfg.tasks.depth_protocol.median_scaling
    assert (cfg.train.iterations, cfg.optim.schedule, cfg.optim.grad_clip) == (90000, "constant", 0.0)
    assert cfg.optim.name == "adam" and cfg.optim.lr == {"backbone": 1.5e-5, "decoders": 2.5e-4, "exchange": 2.5e-4}
    uda = cfg.uda
    assert (uda.lambda_adv, uda.disc_lr, uda.disc_betas, uda.spectral_norm, uda.disc_flip) == (
        5e-3, 1e-4, [0.9, 0.99], True, True)
    assert cfg.data.batch_size == uda.source.batch_size == 2
    assert uda.source.train_split == "all"
    if pair.startswith("vkitti2"):
        assert (uda.source.height, uda.source.width, uda.source.crop) == (512, 1696, [512, 1024])
        assert uda.source.variation == "15-deg-left"
    stem = path.stem
    if stem.startswith("sd_"):
        assert task_weights(cfg.tasks) == WEIGHTS["sd"]
    if stem in ("s_stl", "d_stl"):
        assert cfg.references.is_reference and cfg.uda.enabled and cfg.scenario == "uda"
    elif stem.endswith("oracle"):
        assert cfg.scenario == "supervised" and not cfg.references.is_reference
    else:
        assert not cfg.references.is_reference
        assert cfg.uda.enabled == (not stem.endswith("source-only"))


@pytest.mark.parametrize("stem", ["pretrain", "sd_mteb", "sd_none", "sd_padnet", "s_stl"])
def test_sde_paper_experiments(stem):
    cfg = load_config(EXPERIMENTS / "sde" / "cityscapes" / f"{stem}.yaml")
    assert cfg.model.input_norm == "monodepth" and cfg.model.backbone == "resnet101"
    assert (cfg.data.height, cfg.data.width, cfg.data.crop, cfg.train.iterations) == (512, 1024, [512, 512], 40000)
    if stem != "pretrain":
        assert cfg.optim.lr == {"backbone": 1e-5, "decoders": 5e-5, "exchange": 5e-5, "pose": 1e-6}
        assert cfg.data.batch_size == 2 and cfg.sde.supervised_scales == [0, 2]
        assert cfg.model.stages == {"sd_mteb": [1], "sd_padnet": [2], "sd_none": [1], "s_stl": [1]}[stem]
        assert (cfg.sde.disp_scales, cfg.data.frames) == (([], []) if stem == "s_stl" else ([0, 1, 2, 3], [-1, 1]))


class Perfect(torch.nn.Module):
    """Predicts the labels perfectly at scale 1 (the pre-mTEB output) and uniformly wrong at scale 0."""

    def forward(self, image):
        labels = image[:, 0].long()
        perfect = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 10
        half = perfect[..., ::2, ::2]
        wrong = torch.nn.functional.one_hot((labels + 1) % 3, 3).permute(0, 3, 1, 2).float() * 10
        return {("semseg", 1): half, ("semseg", 0): wrong}


def test_model_selection_and_reports_use_the_full_resolution_output_not_the_pre_exchange_scale():
    labels = torch.randint(0, 3, (2, 8, 8))
    batch = Batch(image=labels[:, None].float().expand(2, 3, 8, 8), K=torch.eye(3).expand(2, 3, 3),
                  targets={"semseg": labels})
    task = SemsegTask(3, torch.zeros(3, 3, dtype=torch.uint8), ["a", "b", "c"])
    metrics = evaluate(Perfect(), {"semseg": task}, [batch], torch.device("cpu"), lambda: torch.autocast("cpu",
                                                                                                         enabled=False))
    assert metrics["semseg"].compute()["miou"] == 0.0  # scale 0 is scored; the perfect scale 1 would give 100


def test_packaged_split_files_are_disjoint():
    splits = resources.files("mtlda.data") / "splits"
    for name in ("synthia", "vkitti2"):
        train = set((splits / f"{name}_train.txt").read_text().split())
        val = set((splits / f"{name}_val.txt").read_text().split())
        assert train and val and not train & val, name


def test_the_papers_vkitti2_split_is_a_fixed_80_20_split_of_every_frame():
    train, val = split_frames("paper_train"), split_frames("paper_val")
    assert not train & val
    every = {(scene, frame) for scene, count in VKITTI2Dataset.official_counts.items() for frame in range(count)}
    assert train | val == every and round(0.8 * len(every)) == len(train)
    assert len({scene for scene, _ in val}) == len(VKITTI2Dataset.official_counts)
