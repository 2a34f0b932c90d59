"""mtlda benchmark: the real training step of every speed option, interleaved, into a JSON report (quick sizes), its
random batches, its per-parameter optimiser baseline, and that the speed options leave training unchanged."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mtlda.benchmarking import cases as bench_cases
from mtlda.benchmarking import measure, plan, random_data, release
from mtlda.commands import benchmark
from mtlda.data.batch import Batch
from mtlda.data.targets import target_kind
from mtlda.errors import UserInputError
from mtlda.scenarios.checkpoint import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
TINY_MODEL = ("model.backbone=resnet18", "model.decoder_channels=[8,8,16,16,16]", "model.aspp_rates=[1,2,3]")


@pytest.fixture()
def cache(monkeypatch, tmp_path_factory) -> None:
    """toycity data in a fresh cache folder."""
    monkeypatch.setenv("MTLDA_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture()
def tiny_subjects(monkeypatch) -> None:
    """The paper subjects with a ResNet-18 and narrow decoders (the same code paths, a fraction of the time)."""
    subjects = {name: plan.Subject(s.description, s.experiment, (*s.overrides, *TINY_MODEL), s.toycity)
                for name, s in plan.SUBJECTS.items()}
    monkeypatch.setattr(plan, "SUBJECTS", subjects)


@pytest.mark.slow
def test_quick_options_and_xtam_write_a_report(cache, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--sections", "options", "xtam", "--out", str(out),
            *(arg for override in TINY_MODEL for arg in ("--set", override))]
    assert benchmark.main(args) == 0
    report = json.loads(out.read_text())
    assert report["command"] == " ".join(["mtlda benchmark", *args])
    assert report["machine"]["torch"] == torch.__version__ and report["load_before"] and report["load_after"]
    options, xtam = report["comparisons"]
    assert options["reference"] == "plain" and options["data"] == "toycity" and options["load_before"]
    rows = {r["config"]: r for r in options["results"]}
    assert list(rows) == ["plain", "default", "channels_last", "fused_optimizer", "checkpoint_all", "bf16"]
    for name, row in rows.items():
        assert row["status"] == "ok" and row["input"] == "2x3x32x64" and row["ms_per_step"] > 0
        assert row["peak_mib"] > row["state_mib"] > 0 and row["parameters"] == rows["plain"]["parameters"]
        assert ("ratio" in row) == (name != "plain") and len(row["step_rss_mib"]) == len(row["ms_all"])
    # the allocator's peak is exact: recomputing every block in the backward pass holds fewer activations (a few
    # MiB at 32x64, where the step's peak is mostly the gradients)
    assert rows["checkpoint_all"]["step_extra_mib"] < rows["default"]["step_extra_mib"]
    assert [r["config"] for r in xtam["results"]] == ["xtam_sdpa", "xtam_explicit"]
    assert xtam["sdpa_kernels"]["ops"]["fp32"] == ["aten::_scaled_dot_product_flash_attention_for_cpu"]
    table = capsys.readouterr().out
    assert "| plain | 2x3x32x64 |" in table and "| xtam_explicit |" in table and f"wrote {out}" in table


@pytest.mark.slow
def test_scenarios_and_weightings_run_on_random_batches(tiny_subjects, tmp_path: Path) -> None:
    probe = measure.MemoryProbe(CPU)
    for name in ("uda", "sde"):
        comparison = plan.Comparison("scenarios", name, plan.QUICK_SIZE, 2, ("default", "fp16"), 0, 1)
        result = bench_cases.run_comparison(comparison, CPU, probe, tmp_path / name)
        assert result["data"].startswith("random") and result["load_after"]
        assert [r["status"] for r in result["results"]] == ["ok", "skipped: needs CUDA"]
    comparison = plan.Comparison("weighting", "paper_sd", plan.QUICK_SIZE, 2,
                                      ("weighting_fixed", "weighting_pcgrad", "weighting_famo"), 0, 1)
    rows = bench_cases.run_comparison(comparison, CPU, probe, tmp_path / "weighting")["results"]
    assert [r["status"] for r in rows] == ["ok"] * 3 and all(r["ratio"] > 0 for r in rows[1:])


def test_random_split_follows_the_target_kinds() -> None:
    split = random_data.RandomSplit(["depth", "edges", "normals", "semseg"], 16, (8, 12), (-1, 1), count=3)
    sample = split[2]
    assert len(split) == 3 and sample.image.shape == (3, 8, 12) and set(sample.frames) == {-1, 1}
    assert sample.targets["semseg"].dtype == torch.int64 and set(sample.masks) == {"depth", "edges", "normals"}
    assert int(sample.targets["semseg"][sample.targets["semseg"] != 255].max()) < 16
    torch.testing.assert_close(sample.targets["normals"].norm(dim=0), torch.ones(8, 12))
    assert (sample.targets["normals"][2] < 0).float().mean() > 0.9  # mostly camera-facing
    assert (sample.targets["depth"] >= 2).all() and set(sample.targets["edges"].unique().tolist()) <= {0.0, 1.0}
    assert target_kind("depth") is not target_kind("edges")


def _tiny_cases(names, tmp_path: Path):
    comparison = plan.Comparison("options", "demo", plan.QUICK_SIZE, 4, tuple(names), 0, 1)
    return [bench_cases.build_case(comparison, plan.VARIANTS[name], CPU, tmp_path / name, TINY_MODEL)
            for name in names]


def test_per_parameter_baseline_keeps_the_groups_and_schedules(cache, tmp_path: Path) -> None:
    plain, default = _tiny_cases(("plain", "default"), tmp_path)
    loop, fused = plain.engine.optimizers["model"], default.engine.optimizers["model"]
    assert loop.defaults["fused"] is False and loop.defaults["foreach"] is False and fused.defaults["fused"] is True
    assert [(g["name"], g["lr"], len(g["params"])) for g in loop.param_groups] == \
        [(g["name"], g["lr"], len(g["params"])) for g in fused.param_groups]
    assert plain.engine.schedulers["model"].optimizer is loop
    assert not plain.scenario.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert default.scenario.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def _losses(case: bench_cases.Case, steps: int) -> list[float]:
    """The engine's losses over ``steps`` steps from the RNG state a run starts with (dropout masks)."""
    seed_everything(case.scenario.cfg.seed)
    return [float(case.step().loss) for _ in range(steps)]


def _in_float64(case: bench_cases.Case) -> None:
    case.scenario.model.double()  # keeps each parameter's memory format
    as64 = lambda d: {k: v.double() if v.is_floating_point() else v for k, v in d.items()}  # noqa: E731
    case.batches = (Batch(b.image.double(), b.K.double(), as64(b.targets), b.masks, as64(b.frames), b.ids)
                    for b in case.batches)


SPEED_OPTIONS = ("plain", "default", "channels_last", "fused_optimizer")


@pytest.mark.slow
def test_speed_options_train_like_the_plain_configuration(cache, tmp_path: Path) -> None:
    """The engine's losses over real toycity steps of the demo model, with and without channels_last and the fused
    optimiser, agree to 1e-5 (float32 rounding differs: channels_last sums in another order, and the fused Adam kernel
    rounds differently from the for-each one: bitwise equal at some learning rates, 1e-8 apart at others)."""
    comparison = plan.Comparison("options", "demo", plan.QUICK_SIZE, 4, SPEED_OPTIONS, 0, 1)
    cases = [bench_cases.build_case(comparison, plan.VARIANTS[name], CPU, tmp_path / name)
             for name in SPEED_OPTIONS]
    losses = {case.variant: _losses(case, 3) for case in cases}
    for name, values in losses.items():
        torch.testing.assert_close(values, losses["plain"], rtol=1e-5, atol=0, msg=name)


@pytest.mark.slow
def test_speed_options_compute_the_same_training_in_float64(cache, tmp_path: Path) -> None:
    """In float64 (rounding out of the way) three steps of every speed option give the plain losses to 1e-10."""
    cases = _tiny_cases(SPEED_OPTIONS, tmp_path)
    for case in cases:
        _in_float64(case)
    losses = {case.variant: _losses(case, 3) for case in cases}
    for name, values in losses.items():
        torch.testing.assert_close(values, losses["plain"], rtol=1e-10, atol=0, msg=name)
    reference = dict(cases[0].scenario.model.named_parameters())
    for case in cases[1:]:
        for key, value in case.scenario.model.named_parameters():
            torch.testing.assert_close(value, reference[key], rtol=1e-8, atol=1e-10, msg=f"{case.variant}: {key}")


def test_the_cpu_allocator_peak_counts_what_the_region_holds_at_once() -> None:
    held = [torch.ones(250_000), torch.ones(1_000_000)]  # 1 MB, then 4 MB allocated before the measurement

    def lead_in() -> None:
        held.append(torch.ones(500_000))  # 2 MB, freed by the region

    def region() -> None:
        held.pop()  # -2 MB
        a = torch.ones(1_000_000)
        b = a * 2  # +8 MB: the peak, 6 MB above the start
        del a, b
        held.pop()  # allocated before the profiler started: its size is unknown and not counted
        x = torch.ones(500_000, requires_grad=True)
        (x * x).sum().backward()  # x.grad: 2 MB, at most +6 MB while it runs

    assert measure.cpu_allocated_peak_bytes(region, lead_in=lead_in) == pytest.approx(6_000_000, abs=4096)
    assert measure.cpu_allocated_peak_bytes(lambda: torch.ones(3_000_000)) == pytest.approx(12_000_000, abs=4096)


def test_a_case_out_of_memory_is_marked_and_left_out(capsys: pytest.CaptureFixture) -> None:
    def out_of_memory() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    cases = [bench_cases.Case(name, SimpleNamespace(optimizers={}), None, iter(()), "2x3x8x8", 1) for name in "ab"]
    cases[0].step, cases[1].step = (lambda: None), out_of_memory
    bench_cases.interleave(cases, 1, 3, CPU, measure.MemoryProbe(CPU))
    assert (cases[0].status, len(cases[0].times), cases[1].status, cases[1].times) == ("ok", 3, "OOM", [])
    assert cases[0].allocated_extra == 0 and cases[1].allocated_extra is None
    assert "round 4/4 (timed" in capsys.readouterr().err
    cases[0].step = lambda: torch.ones(2) @ torch.ones(3)  # any other error is a bug and propagates
    with pytest.raises(RuntimeError, match="size"):
        bench_cases.interleave(cases[:1], 0, 1, CPU, measure.MemoryProbe(CPU))


def test_bad_arguments_are_user_errors(capsys: pytest.CaptureFixture) -> None:
    for args, message in ((["--device", "nope"], "not a torch device"), (["--device", "mps"], "use cpu, cuda"),
                          (["--threads", "-1"], "--threads -1")):
        with pytest.raises(UserInputError, match=message):
            benchmark.parse_args(args)
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="CUDA is not available"):
            benchmark.parse_args(["--device", "cuda"])
    with pytest.raises(SystemExit) as info:
        benchmark.parse_args(["--sections", "nope"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    args = benchmark.parse_args(["--data"])
    assert args.sections == ["options", "paper", "weighting", "xtam", "data"]
    assert args.out == Path("benchmarks/cpu.json")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_full_plan_times_at_least_five_rounds_of_every_comparison(device: str) -> None:
    comparisons = plan.plan(torch.device(device), ("options", "paper", "weighting", "scenarios"), quick=False)
    assert comparisons and all(c.iters >= 5 for c in comparisons)
    assert any(c.size == plan.PAPER_SIZE for c in comparisons)


FAKE_DEMO = """import sys, time
from pathlib import Path
import tree_mark
args = sys.argv[1:]
settings = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
iterations = int(next(s for s in settings if s.startswith("train.iterations=")).split("=")[1])
workdir = Path(args[args.index("--workdir") + 1])
workdir.mkdir(parents=True)
(workdir / "ran").write_text("x")
print(tree_mark.NAME, args[args.index("--device") + 1], *settings)
time.sleep({seconds} * iterations)
sys.exit({code})
"""


def _fake_checkout(root: Path, seconds: float) -> None:
    """A git checkout whose demo script sleeps ``seconds`` a step and records which tree's module it imported."""
    (root / "scripts").mkdir(parents=True, exist_ok=True)
    (root / "scripts" / "supervised.py").write_text(FAKE_DEMO.format(seconds=seconds, code=0))
    (root / "tree_mark.py").write_text("NAME = 'old'\n")
    for command in (["init", "-q"], ["add", "."],
                    ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "old demo"]):
        subprocess.run(["git", "-C", str(root), *command], check=True)


def test_release_comparison_runs_each_trees_own_demo_and_differences_the_runs(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    _fake_checkout(checkout, 0.4)
    (checkout / "scripts" / "supervised.py").write_text(FAKE_DEMO.format(seconds=0.2, code=0))
    (checkout / "tree_mark.py").write_text("NAME = 'new'\n")
    report = release.release_comparison("HEAD", tmp_path / "work", True, 2, ["train.log_every=1"], "cpu", 1, checkout)
    assert len(report["reference_commit"]) == 40 and report["iterations"] == [1, 2]
    assert not list((tmp_path / "work").rglob("ran"))  # each run's folder removed (checkpoints), its log kept
    for name, tree_name, seconds in (("reference", "old", 0.4), ("current", "new", 0.2)):
        ran = (tmp_path / "work" / "r1" / f"{name}_2.log").read_text().split()
        assert ran[:2] == [tree_name, "cpu"] and "train.iterations=2" in ran and "train.val_every=2" in ran
        assert "data.height=32" in ran and "train.log_every=1" in ran and "train.threads=1" in ran
        assert all(r["short_s"] >= seconds and r["long_s"] >= 2 * seconds for r in report["rounds"][name])
    assert report["ratio"] < 0.9
    assert len(report["round_ratios"]) == 2


def test_release_comparison_errors_name_the_revision_and_the_failed_run(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    _fake_checkout(checkout, 0.0)
    with pytest.raises(UserInputError, match="--against nope: not a commit"):
        release.release_comparison("nope", tmp_path / "a", quick=True, rounds=1, tree=checkout)
    with pytest.raises(UserInputError, match="its git checkout"):
        release.source_tree(tmp_path)
    with pytest.raises(UserInputError, match="--set train.val_every=3: the release section sets"):
        release.release_comparison("HEAD", tmp_path / "a", True, 1, ["train.val_every=3"], tree=checkout)
    (checkout / "scripts" / "supervised.py").write_text(FAKE_DEMO.format(seconds=0.0, code=3))
    with pytest.raises(UserInputError, match="failed \\(exit 3"):
        release.release_comparison("HEAD", tmp_path / "b", quick=True, rounds=1, tree=checkout)
    with pytest.raises(UserInputError, match="add --against REV"):
        benchmark.parse_args(["--sections", "release"])
    assert benchmark.parse_args(["--against", "HEAD"]).sections[-1] == "release"
    assert release.step_seconds(10.0, 30.0, 5, 45) == 0.5
