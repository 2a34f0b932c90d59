"""The SDE scenario end to end on tiny toycity sequences: pretraining learns depth, the multi-task stage starts from
it (every decoder body from the depth decoder), resume continues the same run, evaluation and reports work, and
every experiment in experiments/sde builds its model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mtlda
from mtlda.commands.sde import initial_results
from mtlda.config import load_config
from mtlda.data.batch import Batch
from mtlda.errors import UserInputError
from mtlda.panel_layout import font_scale_for, text_height
from mtlda.scenarios.checkpoint import CheckpointError, load_checkpoint
from mtlda.scenarios.dense import PANEL_IMAGES, input_size
from mtlda.scenarios.engine import Engine
from mtlda.scenarios.runner import baseline_rows, evaluate_checkpoint, report, train
from mtlda.scenarios.sde import SDEScenario, build_pose_net, check_sde_config, load_pretrained_depth
from mtlda.schema import DepthProtocol
from mtlda.tasks import DisparityTask

pytestmark = pytest.mark.slow  # trains models (run the fast lane with -m 'not slow')

ROOT = Path(__file__).resolve().parents[1]
SDE_EXPERIMENTS = ROOT / "experiments" / "sde"
PRETRAIN_STEPS = 60


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    """Training here runs with ``train.threads=1`` (two threads on two shared cores are several times slower);
    the thread count of the test session is restored afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny(tmp: Path, workdir: Path, *extra: str) -> list[str]:
    """Overrides for 32x64 toycity with 8 training and 4 validation scenes, cached under ``tmp``, one thread."""
    return [
        "data.height=32", "data.width=64", "data.toycity.height=32", "data.toycity.width=64",
        "data.toycity.num_train=8", "data.toycity.num_val=4", f"data.toycity.cache_dir={tmp / 'cache'}",
        f"references.file={tmp / 'references.yaml'}", f"workdir={workdir}", "device=cpu",
        "train.checkpoint_every=0", "train.image_every=0", "train.threads=1", "optim.schedule=constant", *extra,
    ]


def sde_config(tmp: Path, experiment: str, workdir: Path, *extra: str):
    return load_config(str(SDE_EXPERIMENTS / "toycity" / experiment), tiny(tmp, workdir, *extra))


def initial_abs_rel(cfg) -> float:
    engine = Engine(cfg, Path(cfg.workdir), torch.device("cpu"), show_progress=False)
    return SDEScenario(cfg, engine, train=False).evaluate_tasks(engine)["disp"]["abs_rel"]


@pytest.fixture(scope="module")
def pretrained(module_tmp):
    """A pretrain run of PRETRAIN_STEPS steps: (tmp folder, config, final metrics, AbsRel at initialisation)."""
    tmp = module_tmp
    cfg = sde_config(tmp, "pretrain.yaml", tmp / "pretrain", f"train.iterations={PRETRAIN_STEPS}",
                     f"train.val_every={PRETRAIN_STEPS}")
    _, _, metrics = train(cfg)
    return tmp, cfg, metrics, initial_abs_rel(cfg)


@pytest.fixture(scope="module")
def multitask_run(pretrained):
    """Four multi-task (mTEB) steps from the pretrain checkpoint, validated every 2 steps."""
    tmp, pre_cfg, _, _ = pretrained
    cfg = sde_config(tmp, "sd_mteb.yaml", tmp / "mteb", "train.iterations=4", "train.val_every=2",
                     f"sde.init_from={Path(pre_cfg.workdir) / 'last.pt'}")
    engine, scenario, _ = train(cfg)
    return cfg, engine, scenario


def test_pretraining_learns_depth(pretrained):
    _, _, metrics, initial = pretrained
    # measured: 0.81 at initialisation (a constant depth), 0.49 after 60 steps (0.62 after 40, with footprint-averaged
    # textured images: 40 steps left too small a margin)
    assert metrics["disp/abs_rel"] < 0.8 * initial
    assert metrics["disp/delta1"] > 0


def test_multitask_stage_starts_from_the_depth_decoder(pretrained):
    tmp, pre_cfg, _, _ = pretrained
    checkpoint = Path(pre_cfg.workdir) / "last.pt"
    cfg = sde_config(tmp, "sd_padnet.yaml", tmp / "init", f"sde.init_from={checkpoint}")
    engine = Engine(cfg, Path(cfg.workdir), torch.device("cpu"), show_progress=False)
    scenario = SDEScenario(cfg, engine, train=True)
    saved = load_checkpoint(checkpoint)["modules"]
    depth_body = {k[len("decoders.disp.blocks."):]: v for k, v in saved["model"].items()
                  if k.startswith("decoders.disp.blocks.")}
    assert set(scenario.model.decoders) == {"disp", "semseg"}
    for decoder in scenario.model.decoders.values():
        body = decoder.blocks.state_dict()
        assert body.keys() == depth_body.keys()
        assert all(torch.equal(body[k], depth_body[k]) for k in body)
    encoder = scenario.model.encoder.state_dict()
    assert all(torch.equal(v, saved["model"][f"encoder.{k}"]) for k, v in encoder.items())
    assert all(torch.equal(v, saved["pose"][k]) for k, v in scenario.extra["pose"].state_dict().items())
    disp_heads = scenario.model.decoders["disp"].sides.state_dict()
    assert all(torch.equal(v, saved["model"][f"decoders.disp.sides.{k}"]) for k, v in disp_heads.items())
    assert scenario.model.exchange  # the PAD-Net block is new and trained from scratch
    # the segmentation head has another shape and stays freshly initialised
    semseg_head = scenario.model.decoders["semseg"].sides["0"]
    assert semseg_head.weight.shape[0] == scenario.info.num_classes


def test_a_gated_exchange_block_starts_from_the_pretrained_depth(pretrained):
    """With ``model.block_gate`` the multi-task model at its first step predicts the pretrain model's disparity:
    the new mTEB starts as the identity on the depth decoder's features."""
    tmp, pre_cfg, _, _ = pretrained
    checkpoint = Path(pre_cfg.workdir) / "last.pt"
    image = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    pre = SDEScenario(pre_cfg, Engine(pre_cfg, tmp / "pre-eval", torch.device("cpu"), show_progress=False),
                      train=False, with_data=False).model
    pre.load_state_dict(load_checkpoint(checkpoint)["modules"]["model"])
    cfg = sde_config(tmp, "sd_mteb.yaml", tmp / "gated", f"sde.init_from={checkpoint}", "model.block_gate=true")
    model = SDEScenario(cfg, Engine(cfg, Path(cfg.workdir), torch.device("cpu"), show_progress=False)).model
    assert model.exchange
    with torch.no_grad():
        disparity, expected = model.eval()(image)[("disp", 0)], pre.eval()(image)[("disp", 0)]
    torch.testing.assert_close(disparity, expected, rtol=0, atol=1e-6)  # float summation order only


def test_segmentation_alone_starts_from_the_pretrain_checkpoint_without_depth(pretrained, tmp_path):
    tmp, pre_cfg, _, _ = pretrained
    checkpoint = Path(pre_cfg.workdir) / "last.pt"
    cfg = sde_config(tmp, "s_stl.yaml", tmp_path / "s_stl", f"sde.init_from={checkpoint}", "train.iterations=2",
                     "train.val_every=2")
    engine, scenario, _ = train(cfg)
    assert set(scenario.tasks) == {"semseg"} and set(scenario.model.decoders) == {"semseg"}
    assert scenario.extra == {} and "disp" not in scenario.last_results
    assert {g["name"] for g in engine.optimizers["model"].param_groups} == {"backbone", "decoders"}
    assert set(load_checkpoint(Path(cfg.workdir) / "last.pt")["modules"]) == {"model", "weighting"}
    fresh = SDEScenario(cfg, Engine(cfg, tmp_path / "init", torch.device("cpu"), show_progress=False)).model
    saved = load_checkpoint(checkpoint)["modules"]["model"]
    assert all(torch.equal(v, saved[f"encoder.{k}"]) for k, v in fresh.encoder.state_dict().items())
    assert all(torch.equal(v, saved[f"decoders.disp.blocks.{k}"])
               for k, v in fresh.decoders["semseg"].blocks.state_dict().items())
    assert set(initial_results(cfg)) == {"semseg"}  # the command's "at initialisation" row (no pose net to load)
    with pytest.raises(UserInputError, match="must include 0"):
        check_sde_config(sde_config(tmp, "pretrain.yaml", tmp_path / "bad", "sde.disp_scales=[]"), train=True)


def test_initialisation_reports_what_it_copied_and_rejects_other_checkpoints(pretrained, multitask_run):
    tmp, pre_cfg, _, _ = pretrained
    cfg, _, _ = multitask_run
    engine = Engine(cfg, Path(cfg.workdir), torch.device("cpu"), show_progress=False)
    model = SDEScenario(cfg, engine, train=False, with_data=False).model
    copied = load_pretrained_depth(model, build_pose_net(cfg), Path(pre_cfg.workdir) / "last.pt")
    assert copied and all(name.startswith("disp.sides.") for name in copied)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained_depth(model, build_pose_net(cfg), tmp / "missing.pt")
    with pytest.raises(CheckpointError, match="not an SDE pretrain checkpoint"):
        load_pretrained_depth(model, build_pose_net(cfg), Path(cfg.workdir) / "last.pt")
    with pytest.raises(CheckpointError, match="sde.init_from"):
        load_pretrained_depth(model, build_pose_net(cfg), "")


def test_multitask_training_trains_segmentation_and_depth(multitask_run):
    _, engine, scenario = multitask_run
    assert engine.iteration == 4
    assert set(scenario.last_results) == {"disp", "semseg"}
    assert 0 <= scenario.last_results["semseg"]["miou"] <= 100
    assert scenario.last_results["disp"]["abs_rel"] > 0
    groups = {g["name"]: g["lr"] for g in engine.optimizers["model"].param_groups}
    assert groups == {"backbone": 2e-4, "decoders": 1e-3, "exchange": 1e-3, "pose": 1e-4}
    saved = load_checkpoint(Path(scenario.cfg.workdir) / "last.pt")
    assert set(saved["modules"]) == {"model", "pose", "weighting"}


def test_panels_show_the_photometric_loss_on_training_frames(multitask_run):
    cfg, engine, scenario = multitask_run
    panels = scenario.image_panels(engine)
    assert set(panels) == {"val/predictions", "train/photometric"}
    picture = panels["train/photometric"]
    h, w = input_size(cfg.data, train=True)
    rows = min(PANEL_IMAGES, len(scenario.train_split))
    columns = 1 + 2 * len(cfg.data.frames) + 3  # target; each frame and its warp; error, auto-mask, disparity
    assert picture.shape == (3, text_height(font_scale_for(w)) + rows * (h + 4), columns * (w + 4))
    assert 0 <= picture.min() and picture.max() <= 1
    torch.testing.assert_close(scenario.image_panels(engine)["train/photometric"], picture)  # the same frames


def test_resume_continues_the_same_run(pretrained, multitask_run, tmp_path):
    tmp, pre_cfg, _, _ = pretrained
    full_cfg, _, _ = multitask_run
    extra = ("train.val_every=2", f"sde.init_from={Path(pre_cfg.workdir) / 'last.pt'}")
    first = sde_config(tmp, "sd_mteb.yaml", tmp_path / "split", "train.iterations=2", *extra)
    train(first)
    second = sde_config(tmp, "sd_mteb.yaml", tmp_path / "split", "train.iterations=4", *extra)
    engine, _, _ = train(second, resume=True, allow_changed=["train.iterations"])
    assert engine.iteration == 4
    resumed = load_checkpoint(tmp_path / "split" / "last.pt")["modules"]
    uninterrupted = load_checkpoint(Path(full_cfg.workdir) / "last.pt")["modules"]
    for name in ("model", "pose"):
        for key, value in uninterrupted[name].items():
            assert torch.allclose(resumed[name][key].float(), value.float(), atol=1e-6), (name, key)


def test_evaluation_report_and_prediction_model(multitask_run):
    cfg, _, scenario = multitask_run
    checkpoint = Path(cfg.workdir) / "last.pt"
    engine, evaluated = evaluate_checkpoint(cfg, str(checkpoint))
    results = evaluated.evaluate_tasks(engine)
    for task, metrics in scenario.last_results.items():
        for key, value in metrics.items():
            assert results[task][key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True)
    text = report(cfg, evaluated, results, "evaluated", with_baselines=False, stem="eval-last")
    assert "disp AbsRel" in text and "semseg mIoU" in text and "median scaling per image" in text
    assert (Path(cfg.workdir) / "eval-last.md").is_file()
    panel = evaluated.image_panels(engine)["val/predictions"]
    assert panel.shape[0] == 3 and 0 <= panel.min() and panel.max() <= 1
    baselines = baseline_rows(cfg, evaluated)
    assert set(baselines) == {"trivial: global", "trivial: pixel prior"}
    assert set(baselines["trivial: pixel prior"]) == {"disp", "semseg"}
    # the Python API (and mtlda predict) rebuild the network from the checkpoint's config, disparity head included
    predictor = mtlda.load_model(checkpoint)
    out = predictor.predict(torch.rand(3, 40, 70))
    assert out.semseg.shape == (40, 70) and out.disp.shape == (40, 70) and (out.disp > 0).all()


def test_configuration_errors_name_the_key_to_fix(pretrained, tmp_path):
    tmp, _, _, _ = pretrained
    cfg = sde_config(tmp, "sd_mteb.yaml", tmp_path / "bad", "tasks.names=[S, D]")
    with pytest.raises(UserInputError, match="leave D out of tasks.names"):
        check_sde_config(cfg, train=True)
    cfg = sde_config(tmp, "pretrain.yaml", tmp_path / "bad", "data.frames=[]")
    with pytest.raises(ValueError, match="data.frames"):
        check_sde_config(cfg, train=True)
    check_sde_config(cfg, train=False)
    cfg = sde_config(tmp, "pretrain.yaml", tmp_path / "bad", "data.scale_jitter=[0.8, 1.2]")
    with pytest.raises(UserInputError, match="black borders"):
        check_sde_config(cfg, train=True)
    cfg = sde_config(tmp, "pretrain.yaml", tmp_path / "bad", "train.selection_metric=delta")
    engine = Engine(cfg, Path(cfg.workdir), torch.device("cpu"), show_progress=False)
    assert SDEScenario(cfg, engine, train=False).selection() == ("disp/abs_rel", False)  # no delta: fallback
    cfg = sde_config(tmp, "pretrain.yaml", tmp_path / "bad", "train.selection_metric=disp/absrel")
    with pytest.raises(UserInputError, match="disp/abs_rel"):
        SDEScenario(cfg, engine, train=False).selection()
    cfg = sde_config(tmp, "pretrain.yaml", tmp_path / "bad", "tasks.depth_protocol.median_scaling=false")
    with pytest.raises(ValueError, match="median_scaling=true"):
        SDEScenario(cfg, engine, train=False)


def test_script_runs_both_stages_and_reports(pretrained, tmp_path):
    tmp, _, _, _ = pretrained
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    options = [option for override in tiny(tmp, tmp_path) if not override.startswith("workdir=")
               for option in ("--set", override)]
    command = [sys.executable, str(ROOT / "scripts" / "sde.py"), "--workdir", str(tmp_path / "demo"), *options,
               "--set", "train.iterations=2", "--set", "train.val_every=2"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "at initialisation (from the pretrain checkpoint)" in done.stdout
    assert "trivial: pixel prior" in done.stdout
    for stage in ("pretrain", "sd_mteb"):
        assert (tmp_path / "demo" / stage / "results.md").is_file()
    missing = [sys.executable, str(ROOT / "scripts" / "sde.py"), "--stage", "multitask", "--init-from",
               str(tmp_path / "none.pt"), "--workdir", str(tmp_path / "failed"), *options]
    failed = subprocess.run(missing, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "none.pt not found" in failed.stderr
    assert not (tmp_path / "failed").exists()


def test_disparity_task_decodes_evaluates_and_draws():
    task = DisparityTask(0.1, 100.0)
    disp = torch.tensor([0.0, 1.0, 0.5]).reshape(1, 1, 1, 3)
    depth = task.decode(disp)
    expected = 1 / torch.tensor([0.01, 10.0, 0.01 + 0.5 * (10 - 0.01)])
    assert torch.allclose(depth.flatten(), expected)
    assert task.protocol.median_scaling and task.protocol.per_image
    gt = torch.full((2, 1, 4, 6), 8.0)
    gt[1] = 20.0
    batch = Batch(image=torch.zeros(2, 3, 4, 6), K=torch.eye(3).expand(2, 3, 3), targets={"depth": gt},
                  masks={"depth": torch.ones(2, 1, 4, 6, dtype=torch.bool)})
    metric = task.new_metric()
    task.score(metric, gt * torch.tensor([0.3, 7.0]).reshape(2, 1, 1, 1), batch)  # right up to a scale per image
    assert metric.compute()["abs_rel"] == pytest.approx(0.0, abs=1e-9)
    ramp = torch.linspace(1, 30, 24).reshape(1, 1, 4, 6)
    assert torch.allclose(task.visualise(ramp), task.visualise(3 * ramp))
    assert task.visualise_target(batch).shape == (2, 3, 4, 6)
    with pytest.raises(ValueError, match="photometric"):
        task.loss(disp, batch)
    with pytest.raises(ValueError, match="median_scaling"):
        DisparityTask(protocol=DepthProtocol(median_scaling=False))
    with pytest.raises(ValueError, match="min_depth"):
        DisparityTask(1.0, 0.5)


@pytest.mark.parametrize("path", sorted((SDE_EXPERIMENTS / d / f for d in ("toycity", "cityscapes")
                                         for f in os.listdir(SDE_EXPERIMENTS / d)), key=str),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_experiment_parses_and_builds_its_model(path):
    cfg = load_config(str(path), [])
    self_supervised = path.stem != "s_stl"
    assert cfg.scenario == "sde" and cfg.data.frames == ([-1, 1] if self_supervised else [])
    stage = "pretrain" if path.stem == "pretrain" else "multitask"
    assert cfg.sde.stage == stage
    if stage == "multitask":
        assert cfg.model.block == (path.stem.removeprefix("sd_") if self_supervised else "none")
        assert cfg.sde.init_from.endswith("_sde_pretrain/s0/last.pt")

    if path.parent.name == "cityscapes":
        assert (cfg.model.backbone, cfg.model.pretrained, cfg.data.crop) == ("resnet101", "imagenet", [512, 512])
        assert (cfg.data.height, cfg.data.width, cfg.train.iterations) == (512, 1024, 40000)
        if stage == "multitask":
            assert cfg.data.batch_size == 2
            assert cfg.optim.lr == {"backbone": 1e-5, "decoders": 5e-5, "exchange": 5e-5, "pose": 1e-6}
    check_sde_config(cfg, train=True)
    cfg = load_config(str(path), ["model.pretrained=none"])
    with torch.device("meta"):
        engine = Engine(cfg, Path(cfg.workdir), torch.device("meta"), show_progress=False)
        model = SDEScenario(cfg, engine, train=False, with_data=False).model
    model.valid_input_size(*input_size(cfg.data, train=True))
    model.valid_input_size(*input_size(cfg.data, train=False))
    supervised = set() if stage == "pretrain" else {"semseg"}
    assert set(model.tasks) == supervised | ({"disp"} if self_supervised else set())
    assert build_pose_net(cfg).encoder.backbone == cfg.sde.pose_backbone


def test_the_multitask_stage_keeps_a_learned_depth(tmp_path):
    """A learning test at the demo's 64x128 on 48 sequences: a 120-step pretrain learns depth, and 60 multi-task
    mTEB steps from it keep that depth (the first release's ungated exchange block lost it).

    Measured (seeds 0 / 1 / 2): pretrain AbsRel 0.26 / 0.28 / 0.26 from 0.75 at initialisation; after the
    multi-task stage 0.97 / 0.90 / 0.91 times the pretrained AbsRel, and 1.65 / 1.18 / 1.24 times without the gate
    (``model.block_gate=false``). ~2 minutes on 2 cores."""
    def small(experiment: str, workdir: Path, *extra: str):
        return load_config(str(SDE_EXPERIMENTS / "toycity" / experiment), [
            "data.toycity.num_train=48", "data.toycity.num_val=12", "data.val_batch_size=12",
            f"data.toycity.cache_dir={tmp_path / 'cache'}", f"references.file={tmp_path / 'references.yaml'}",
            f"workdir={workdir}", "device=cpu", "seed=0", "train.checkpoint_every=0", "train.image_every=0",
            "train.threads=2", *extra])

    pre = small("pretrain.yaml", tmp_path / "pretrain", "train.iterations=120", "train.val_every=120")
    _, _, pretrained = train(pre)
    assert pretrained["disp/abs_rel"] < 0.7 * initial_abs_rel(pre)
    multitask = small("sd_mteb.yaml", tmp_path / "mteb", "train.iterations=60", "train.val_every=60",
                      f"sde.init_from={tmp_path / 'pretrain' / 'last.pt'}")
    _, _, after = train(multitask)
    assert after["disp/abs_rel"] < 1.1 * pretrained["disp/abs_rel"]
