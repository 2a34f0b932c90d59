"""GPU readiness, checked on the CPU: no tensor of a training step is created on a hard-coded device (every scenario
trains a step on the ``meta`` device), the loss-scaling (fp16) and bf16 paths, fused attention kernels at the paper's
resolution, the DDP settings and the automatic loader worker count."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlda.benchmarking import attention, plan, random_data
from mtlda.benchmarking import cases as bench_cases
from mtlda.distributed import ddp_options, loader_workers
from mtlda.errors import UserInputError
from mtlda.models import XTAM
from mtlda.scenarios.checkpoint import seed_everything
from mtlda.scenarios.engine import Engine
from mtlda.scenarios.registry import scenario_class

pytestmark = pytest.mark.usefixtures("one_thread")
CPU, META = torch.device("cpu"), torch.device("meta")
TINY_MODEL = ["model.backbone=resnet18", "model.decoder_channels=[8,8,16,16,16]", "model.aspp_rates=[1,2,3]"]
STEP_OVERRIDES = {"supervised": [], "uda": [],
                  "sde": ["sde.stage=pretrain", "train.selection_metric=disp/abs_rel"]}


def tiny_config(subject: str, tmp_path: Path, *extra: str):
    return bench_cases.case_config(plan.SUBJECTS[subject], plan.VARIANTS["default"], (32, 64), 2, CPU,
                                   tmp_path, [*TINY_MODEL, *STEP_OVERRIDES[subject], *extra])


@pytest.fixture()
def meta_friendly(monkeypatch) -> None:
    """What a meta tensor cannot do without data: truth values (finiteness checks) are True, autocast regions on
    ``meta`` are no-ops. Everything else runs as on a GPU, where a CPU tensor meeting a device tensor is an error."""
    truth = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: True if t.device.type == "meta" else truth(t))
    autocast = torch.autocast

    def meta_autocast(device_type: str, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else autocast(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", meta_autocast)


def _tensors_of(module: nn.Module):
    yield from module.parameters()
    yield from module.buffers()
    for sub in module.modules():  # tensors kept as plain attributes would not follow .to(device)
        yield from (value for value in vars(sub).values() if isinstance(value, Tensor))


@pytest.mark.parametrize("subject", ["supervised", "uda", "sde"])
def test_every_scenario_trains_a_step_on_the_meta_device(subject, meta_friendly, tmp_path: Path) -> None:
    cfg = tiny_config(subject, tmp_path)
    engine = Engine(cfg, tmp_path, META, show_progress=False)
    scenario = random_data.with_random_data(scenario_class(cfg.scenario))(cfg, engine, True)
    engine.attach(scenario)
    out = scenario.train_step(next(scenario.train_batches(0)), engine)
    engine._optimizer_step()
    scenario.after_step(engine)
    assert out.loss.device == META and all(t.device == META for t in out.terms.values())
    for name, module in scenario.modules().items():
        assert {t.device.type for t in _tensors_of(module)} <= {"meta"}, name
    states = [v for opt in engine.optimizers.values() for s in opt.state.values() for v in s.values()
              if isinstance(v, Tensor) and v.dim() > 0]
    assert states and {t.device.type for t in states} == {"meta"}


def _cases(names, tmp_path: Path, *extra: str):
    comparison = plan.Comparison("options", "paper_sd", plan.QUICK_SIZE, 2, tuple(names), 0, 1)
    return [bench_cases.build_case(comparison, plan.VARIANTS[name], CPU, tmp_path / name, [*TINY_MODEL, *extra])
            for name in names]


def losses(case: bench_cases.Case, steps: int) -> list[float]:
    """The losses of ``steps`` training steps of ``case`` from the RNG state a run starts with (dropout masks)."""
    seed_everything(case.scenario.cfg.seed)
    return [float(case.step().loss) for _ in range(steps)]


def test_the_engine_refuses_fp16_on_the_cpu(tmp_path: Path) -> None:
    cfg = tiny_config("supervised", tmp_path, "train.amp=true", "train.amp_dtype=fp16")
    with pytest.raises(UserInputError, match="fp16 autocast needs a CUDA GPU"):
        Engine(cfg, tmp_path, CPU)
    bf16 = Engine(tiny_config("supervised", tmp_path, "train.amp=true"), tmp_path, CPU)
    assert bf16.amp_dtype == torch.bfloat16 and not bf16.scaler.is_enabled()


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["fixed", "pcgrad"])
def test_loss_scaling_trains_like_unscaled_and_skips_overflowing_steps(weighting, tmp_path: Path) -> None:
    """The fp16 path's GradScaler (enabled here on the CPU, in float32): scaled backward, unscaling before gradient
    clipping, the scaler's step and update give the unscaled training; an overflow skips the step and halves the
    scale. Loss-level and gradient-level weightings."""
    plain, scaled = _cases(("default", "default"), tmp_path, f"tasks.weighting={{name: {weighting}}}")
    scaled.engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    torch.testing.assert_close(losses(scaled, 3), losses(plain, 3), rtol=1e-5, atol=1e-6)
    for p, q in zip(scaled.scenario.model.parameters(), plain.scenario.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert scaled.engine.scaler.get_scale() == 2.0**11  # grown once after two finite steps
    params = [p.detach().clone() for p in scaled.scenario.model.parameters()]
    head = next(scaled.scenario.model.decoders["semseg"].parameters())
    handle = head.register_hook(lambda grad: grad * float("inf"))
    scaled.step()
    handle.remove()
    assert scaled.engine.scaler.get_scale() == 2.0**10
    assert all(torch.equal(p, q) for p, q in zip(scaled.scenario.model.parameters(), params))


def test_source_only_uda_steps_with_a_loss_scaler(tmp_path: Path) -> None:
    """Source-only UDA keeps discriminators that no gradient reaches; the fp16 path's GradScaler refuses to step an
    optimiser without unscaled gradients, so the engine must leave theirs alone."""
    comparison = plan.Comparison("scenarios", "uda", plan.QUICK_SIZE, 2, ("plain",), 0, 1)
    case = bench_cases.build_case(comparison, plan.VARIANTS["plain"], CPU, tmp_path,  # fused Adam would not tell
                                  [*TINY_MODEL, "uda.enabled=false"])
    case.engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    discriminators = case.scenario.extra["discriminators"]
    before = [p.detach().clone() for p in discriminators.parameters()]
    assert torch.isfinite(torch.tensor(losses(case, 2))).all()
    assert all(torch.equal(p, q) for p, q in zip(discriminators.parameters(), before))


def test_fp16_autocast_trains_on_the_cpu_with_a_scaler(tmp_path: Path) -> None:
    """The fp16 branch end to end where torch allows it (CPU fp16 autocast), bypassing the engine's CPU refusal."""
    (case,) = _cases(("bf16",), tmp_path)
    case.engine.amp_dtype = torch.float16
    case.engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    dtypes = []
    case.scenario.model.encoder.conv1.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    values = losses(case, 2)
    assert dtypes == [torch.float16] * 2 and torch.isfinite(torch.tensor(values)).all()
    assert all(p.dtype == torch.float32 for p in case.scenario.model.parameters())


@pytest.mark.slow
def test_attention_runs_a_fused_kernel_at_the_paper_resolution() -> None:
    """Stage-1 features of a 512x1024 input (256x512, 8192 tokens): SDPA dispatches to the fused (flash) CPU
    kernel in float32 and bf16, never to the math fallback that materialises the 8192 x 8192 matrix."""
    xtam = XTAM(128, 4).train()
    features = torch.randn(1, 128, 256, 512, generator=torch.Generator().manual_seed(0))
    for dtype in (None, torch.bfloat16):
        assert attention.sdpa_ops(xtam, features, features, dtype) == [
            "aten::_scaled_dot_product_flash_attention_for_cpu"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_attention_backends_on_cuda_at_the_paper_resolution() -> None:
    device = torch.device("cuda")
    xtam = XTAM(128, 4).to(device).train()
    features = torch.randn(2, 128, 256, 512, device=device)
    report = attention.sdpa_kernels(xtam, features, features, device)
    assert report["forced_backends"]["EFFICIENT_ATTENTION/fp32"] == "runs"
    assert report["forced_backends"]["FLASH_ATTENTION/bf16"] == "runs"
    assert not any("math" in op for ops in report["ops"].values() for op in ops)


def test_ddp_settings_are_explicit_and_train_like_one_process(tmp_path: Path, monkeypatch) -> None:
    assert ddp_options(torch.device("cuda", 3)) == {
        "device_ids": [3], "find_unused_parameters": False, "static_graph": True, "gradient_as_bucket_view": True,
        "bucket_cap_mb": 25}
    assert ddp_options(CPU)["device_ids"] is None
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        plain, wrapped = _cases(("default", "default"), tmp_path)
        wrapped.scenario.wrap_for_distributed(wrapped.engine)
        assert isinstance(wrapped.scenario.model, nn.parallel.DistributedDataParallel)
        torch.testing.assert_close(losses(wrapped, 3), losses(plain, 3), rtol=1e-6, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_auto_loader_workers_follow_the_cpus(monkeypatch, tmp_path: Path) -> None:
    assert tiny_config("supervised", tmp_path, "data.workers=-1").data.workers == -1
    with pytest.raises(UserInputError, match="below the minimum -1"):
        tiny_config("supervised", tmp_path, "data.workers=-2")
    assert loader_workers(0) == 0 and loader_workers(3) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(-1) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader_workers(-1) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers(-1) == 0  # 2 cores: loading in the main process is faster (benchmarks/cpu.json)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_workers(-1) == 0
