"""UDA scenario end to end on tiny toycity: adversarial steps, discriminator optimiser state, resume, target eval."""

from __future__ import annotations

import copy

import pytest
import torch

from mtlda.config import load_config
from mtlda.errors import UserInputError
from mtlda.losses.adversarial import discriminator_loss
from mtlda.scenarios.checkpoint import load_checkpoint
from mtlda.scenarios.engine import Engine
from mtlda.scenarios.runner import evaluate_checkpoint, train
from mtlda.scenarios.uda import UDAScenario

pytestmark = pytest.mark.slow  # trains models (run the fast lane with -m 'not slow')

SIZE = ["height=64", "width=128", "toycity.height=64", "toycity.width=128", "toycity.num_train=16",
        "toycity.num_val=8", "batch_size=4"]


def tiny(tmp_path, *extra):
    cache = tmp_path.parent / "uda-cache"
    sets = [f"data.{s}" for s in SIZE] + [f"uda.source.{s}" for s in SIZE]
    sets += [f"data.toycity.cache_dir={cache}", f"uda.source.toycity.cache_dir={cache}", "data.val_batch_size=8",
             "train.val_every=1000", "train.image_every=0", "train.checkpoint_every=2", f"workdir={tmp_path / 'run'}",
             f"references.file={tmp_path / 'refs.yaml'}", "train.threads=2"]
    return load_config("experiments/uda/toycity/sd_mteb.yaml", sets + list(extra))


def test_uda_trains_resumes_and_evaluates_on_target(tmp_path):
    cfg = tiny(tmp_path, "train.iterations=2")
    engine, scenario, _ = train(cfg)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert set(ckpt["modules"]) == {"model", "discriminators", "weighting"}
    assert set(ckpt["optimizers"]) == {"model", "discriminators"}
    assert sorted(scenario.extra["discriminators"].keys()) == ["depth_s0", "depth_s1", "semseg_s0", "semseg_s1"]
    adam = ckpt["optimizers"]["discriminators"]
    assert adam["param_groups"][0]["betas"] == (0.9, 0.99) and adam["state"]  # moments exist after 2 steps
    longer = tiny(tmp_path, "train.iterations=3")
    engine, scenario, _ = train(longer, resume=True, allow_changed=["train.iterations"])
    assert engine.iteration == 3
    assert load_checkpoint(tmp_path / "run" / "last.pt")["optimizers"]["discriminators"]["state"][0]["step"] == 3
    key = scenario.references.key
    assert (key.scenario, key.dataset, key.setting) == ("uda", "toycity-textured-s1-8val",
                                                         "from toycity-synthetic, adapted")
    panels = scenario.image_panels(engine)
    assert set(panels) == {"val/predictions", "train/adaptation"}
    # source over target; per image: input, prediction and target of both tasks, both discriminator inputs
    picture, one_domain = panels["train/adaptation"], panels["val/predictions"]
    assert picture.shape[2] == one_domain.shape[2] + 2 * (128 + 4) and picture.shape[1] > 2 * one_domain.shape[1]
    engine, evaluated = evaluate_checkpoint(longer, str(tmp_path / "run" / "last.pt"))
    results = evaluated.evaluate_tasks(engine)
    assert set(results) == {"depth", "semseg"}
    assert results["semseg"]["miou"] == pytest.approx(scenario.last_results["semseg"]["miou"])


def test_discriminators_step_only_on_their_loss_and_source_only_has_none(tmp_path):
    cfg = tiny(tmp_path, "train.iterations=1")
    engine = Engine(cfg, tmp_path / "run", torch.device("cpu"), show_progress=False)
    scenario = UDAScenario(cfg, engine)
    engine.attach(scenario)
    src, tgt = next(scenario.train_batches(0))
    rng = torch.get_rng_state()  # replayed below so ASPP dropout draws the same masks
    out = scenario.train_step((src, tgt), engine)
    assert {"adv/semseg_s0", "disc/depth_s1", "adv/weighted"} <= set(out.terms)
    discriminators = scenario.extra["discriminators"]
    assert all(p.grad is not None for p in discriminators.parameters())
    grads = [p.grad.clone() for p in discriminators.parameters()]
    for p in discriminators.parameters():
        p.grad = None
    for p in scenario.model.parameters():
        p.grad = None
    # The discriminator gradients come from the discriminator loss alone: recompute it directly.
    torch.set_rng_state(rng)
    with torch.no_grad():
        sp, tp = scenario.model(src.image), scenario.model(tgt.image)
    contexts = {name: task.discriminator_context(src) for name, task in scenario.tasks.items()}
    loss, _ = discriminator_loss(discriminators, scenario._inputs(sp, contexts, (64, 128)),
                                 scenario._inputs(tp, contexts, (64, 128)))
    loss.backward()
    for g, p in zip(grads, discriminators.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    source_only = tiny(tmp_path, "train.iterations=1", "uda.enabled=false")
    engine = Engine(source_only, tmp_path / "run2", torch.device("cpu"), show_progress=False)
    scenario = UDAScenario(source_only, engine)
    engine.attach(scenario)
    out = scenario.train_step(next(scenario.train_batches(0)), engine)
    assert not any(k.startswith(("adv/", "disc/")) for k in out.terms)
    assert set(scenario.image_panels(engine)) == {"val/predictions"}
    assert all(p.grad is None for p in scenario.extra["discriminators"].parameters())


def _running_statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]


@pytest.mark.parametrize("target_only,checkpointing", [(True, "none"), (False, "none"), (True, "all")])
def test_target_bn_statistics_leave_the_running_statistics_to_the_target_batches(tmp_path, target_only,
                                                                                  checkpointing):
    """With uda.target_bn_statistics the step's running statistics are what the target batch alone makes of the
    initial ones (the source batch normalised with its own statistics, its forward replayed here with the buffers
    put back by hand), also when checkpointed segments run their forward again in the backward pass; without it,
    both batches move them."""
    cfg = tiny(tmp_path, "train.iterations=1", f"uda.target_bn_statistics={target_only}",
               f"model.checkpointing={checkpointing}")
    engine = Engine(cfg, tmp_path / "run", torch.device("cpu"), show_progress=False)
    scenario = UDAScenario(cfg, engine)
    engine.attach(scenario)
    expected = copy.deepcopy(scenario.model).train()
    src, tgt = next(scenario.train_batches(0))
    rng = torch.get_rng_state()
    scenario.train_step((src, tgt), engine)
    torch.set_rng_state(rng)
    before = copy.deepcopy(expected.state_dict())
    with torch.no_grad():
        expected(src.image)
        if target_only:
            expected.load_state_dict(before)
        expected(tgt.image)
    for got, want in zip(_running_statistics(scenario.model), _running_statistics(expected), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_same_data_set_as_source_and_target_is_refused(tmp_path):
    cfg = tiny(tmp_path, "train.iterations=1", "data.toycity.style=synthetic")
    engine = Engine(cfg, tmp_path / "run", torch.device("cpu"), show_progress=False)
    with pytest.raises(UserInputError, match="the same data set"):
        UDAScenario(cfg, engine)


def test_the_discriminators_adapt_target_depth_beyond_batchnorm_statistics(tmp_path):
    """The fast learning test of the method: flat -> textured toycity S-D mTEB (the first releases' source style,
    a gap that shared textures do not help to close; BatchNorm statistics mixed from both domains, as the official
    code), 64 scenes per domain at 64x128, 80 steps, seed 0, against
    the same training with lambda_adv = 0. That control runs the target batches through the network too, so its
    BatchNorm layers adapt to the target as well (AdaBN's effect, most of the segmentation gain of adaptation on
    toycity: a comparison with source-only passes without any working discriminator); only the adversarial term
    differs. Measured target depth AbsRel (seeds 0, 1, 2; ~2.5 min for both runs on 2 cores):
    adapted 0.274, 0.343, 0.440; lambda_adv = 0: 0.346, 0.455, 0.506 (mIoU 32.0, 33.5, 28.5 vs 29.5, 28.7, 27.8;
    at 60 steps the depth margins fall to 0.03-0.06)."""
    sets = ["uda.source.toycity.style=flat", "uda.target_bn_statistics=false", "train.iterations=80",
            "train.val_every=80", "train.checkpoint_every=0", "train.image_every=0", "train.threads=2",
            f"references.file={tmp_path / 'refs.yaml'}"]
    for domain in ("data", "uda.source"):
        sets += [f"{domain}.toycity.num_train=64", f"{domain}.toycity.num_val=20",
                 f"{domain}.toycity.cache_dir={tmp_path / 'cache'}"]
    abs_rel = {}
    for lambda_adv in (0.05, 0.0):
        cfg = load_config("experiments/uda/toycity/sd_mteb.yaml",
                          [*sets, f"uda.lambda_adv={lambda_adv}", f"workdir={tmp_path / str(lambda_adv)}"])
        _, scenario, _ = train(cfg)
        abs_rel[lambda_adv] = scenario.last_results["depth"]["abs_rel"]
    assert abs_rel[0.05] < abs_rel[0.0] - 0.03, abs_rel
