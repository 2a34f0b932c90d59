"""The training engine: exact resume after an interruption, atomic checkpoints, DDP equivalence."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from mtlda.config import load_config
from mtlda.data.sampling import infinite_batches
from mtlda.distributed import DistInfo, init_distributed
from mtlda.errors import UserInputError
from mtlda.files import WriteError
from mtlda.scenarios.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mtlda.scenarios.engine import Engine, OptimizerSpec, Scenario, StepOutput, TrainingError
from mtlda.scenarios.interrupts import Interrupted


class NoisyPairs(Dataset):
    """Random inputs with a random flip inside __getitem__, so augmentation randomness matters."""

    def __init__(self, n: int = 24) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=gen)
        self.y = torch.randn(n, 1, 8, 8, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x, y = self.x[i], self.y[i]
        if torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x + 0.01 * torch.randn_like(x), y


def stack(items):
    return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


class ToyScenario(Scenario):
    """A small conv net; ``signal_at``: send SIGINT to this process during that iteration's step (``signals``
    times); validation and panels draw from the global RNG, as a careless scenario would."""

    def __init__(self, cfg, engine: Engine, with_noise_layers: bool = True, signal_at: int | None = None,
                 signals: int = 1) -> None:
        torch.manual_seed(123)
        layers = [nn.Conv2d(3, 8, 3, padding=1)]
        if with_noise_layers:
            layers += [nn.BatchNorm2d(8), nn.Dropout(0.3)]
        layers += [nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1)]
        self.model = nn.Sequential(*layers)
        self.cfg, self.engine, self.signal_at, self.signals = cfg, engine, signal_at, signals
        self.data = NoisyPairs()
        self.losses: list[float] = []

    def modules(self):
        return {"model": self.model}

    def optimizers(self):
        return {"model": OptimizerSpec({"decoders": list(self.model.parameters())}, self.cfg.optim)}

    def train_batches(self, start_iteration):
        d = self.engine.dist
        return infinite_batches(self.data, self.cfg.data.batch_size, self.cfg.seed, start_iteration, stack,
                                rank=d.rank, world=d.world_size)

    def wrap_for_distributed(self, engine):
        self.model = nn.parallel.DistributedDataParallel(self.model)

    def train_step(self, batch, engine):
        self.model.train()
        x, y = batch
        loss = nn.functional.mse_loss(self.model(x), y)
        if self.signal_at is not None and engine.iteration == self.signal_at:
            for _ in range(self.signals):
                os.kill(os.getpid(), signal.SIGINT)
        engine.backward(loss)
        self.losses.append(loss.item())
        return StepOutput({"mse": loss.detach(), "total": loss.detach()}, loss.detach())

    def validate(self, engine):
        torch.randn(5)
        return {"toy/mse": self.losses[-1] if self.losses else float("nan")}

    def image_panels(self, engine):
        torch.rand(3)
        return {}

    def selection(self):
        return "toy/mse", False


def _cfg(tmp_path: Path, iterations: int = 10, batch_size: int = 4, **extra):
    sets = [f"train.iterations={iterations}", "train.val_every=4", "train.checkpoint_every=3",
            f"data.batch_size={batch_size}", "optim.schedule=poly", "optim.lr.decoders=0.05",
            "train.selection_metric=toy/mse", f"workdir={tmp_path}", "train.image_every=0"]
    sets += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, sets)


def _run(cfg, resume=False, **kw):
    engine = Engine(cfg, Path(cfg.workdir), torch.device("cpu"), show_progress=False)
    scenario = ToyScenario(cfg, engine, **kw)
    try:
        engine.fit(scenario, resume=resume)
    finally:
        engine.close()
    return scenario, engine


def test_ctrl_c_finishes_the_step_saves_and_resume_reproduces_losses(tmp_path):
    full, _ = _run(_cfg(tmp_path / "full", iterations=14))
    with pytest.raises(Interrupted, match="after iteration 6"):
        _run(_cfg(tmp_path / "split", iterations=14), signal_at=5)  # the signal arrives during step 6
    ckpt = load_checkpoint(tmp_path / "split" / "last.pt")
    assert ckpt["iteration"] == 6
    resumed, engine = _run(_cfg(tmp_path / "split", iterations=14), resume=True)
    assert engine.iteration == 14
    assert resumed.losses == full.losses[6:]
    assert (tmp_path / "split" / "best.pt").is_file()
    assert (tmp_path / "split" / "config.yaml").is_file()


def test_resume_from_a_checkpoint_taken_at_a_validation_iteration_is_exact(tmp_path):
    extra = {"train.val_every": 3, "train.image_every": 3}  # validation and panels at every checkpoint
    full, _ = _run(_cfg(tmp_path / "full", iterations=10, **extra))
    with pytest.raises(Interrupted):
        _run(_cfg(tmp_path / "split", iterations=10, **extra), signal_at=4)  # stops after iteration 5
    for name in ("last.pt",):
        assert load_checkpoint(tmp_path / "split" / name)["iteration"] == 5
    cfg = _cfg(tmp_path / "split", iterations=10, **extra)
    resumed, _ = _run(cfg, resume=True)
    assert resumed.losses == full.losses[5:]


def test_second_signal_stops_at_once_and_saves_nothing_from_the_cut_step(tmp_path):
    with pytest.raises(Interrupted, match="nothing saved from it; .*last.pt holds iteration 3"):
        _run(_cfg(tmp_path, iterations=14), signal_at=4, signals=2)
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 3


def test_resume_with_a_changed_config_is_refused_unless_allowed(tmp_path):
    _run(_cfg(tmp_path, iterations=4))
    changed = _cfg(tmp_path, iterations=6, **{"optim.lr.decoders": 0.01})
    engine = Engine(changed, tmp_path, torch.device("cpu"), show_progress=False)
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"optim.lr.decoders: 0.05 -> 0.01.*--allow-changed"):
        engine.fit(ToyScenario(changed, engine), resume=True)
    assert (tmp_path / "config.yaml").read_text() == before
    engine = Engine(changed, tmp_path, torch.device("cpu"), show_progress=False)
    engine.fit(ToyScenario(changed, engine), resume=True, allow_changed=["optim.lr", "train.iterations"])
    assert engine.schedulers["model"].base_lrs == [0.01]
    assert "0.01" in (tmp_path / "config.yaml").read_text()


def test_schedule_and_clip_restored(tmp_path):
    _, engine = _run(_cfg(tmp_path, iterations=6))
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["schedulers"]["model"]["last_epoch"] == 6
    lr = engine.optimizers["model"].param_groups[0]["lr"]
    assert lr == pytest.approx(0.05 * (1 - 6 / 6) ** 0.9)


def test_atomic_write_keeps_old_checkpoint_on_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"modules": {"model": {"w": torch.ones(3)}}, "iteration": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"partial garbage")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(WriteError, match="No space left on device; the previous file .* is unchanged"):
        save_checkpoint({"modules": {}, "iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoints_are_data_and_a_pickled_callable_is_refused(tmp_path):
    _run(_cfg(tmp_path, iterations=3))
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["format"] == "mtlda-checkpoint" and ckpt["mtlda_version"] and ckpt["iteration"] == 3
    evil = tmp_path / "evil.pt"
    torch.save({"modules": {}, "hook": os.system}, evil)
    with pytest.raises(CheckpointError, match="refusing to load .*could run code"):
        load_checkpoint(evil)


def test_non_finite_loss_stops_with_a_message_that_says_what_is_on_disk(tmp_path):
    cfg = _cfg(tmp_path, iterations=8, **{"optim.lr.decoders": 1e30, "optim.grad_clip": 0,
                                         "train.checkpoint_every": 1})
    with pytest.raises(TrainingError, match=r"non-finite loss at iteration (\d+).*last.pt holds iteration"):
        _run(cfg)
    cfg = _cfg(tmp_path / "early", iterations=8, **{"optim.lr.decoders": 1e30, "optim.grad_clip": 0,
                                                   "train.checkpoint_every": 0})
    with pytest.raises(TrainingError, match="no checkpoint has been written yet"):
        _run(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, workdir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    cfg = _cfg(Path(workdir), iterations=1, batch_size=2, **{"optim.name": "sgd", "optim.momentum": 0.0})
    engine = Engine(cfg, Path(workdir), torch.device("cpu"), dist=info, show_progress=False)
    scenario = ToyScenario(cfg, engine, with_noise_layers=False)
    engine.fit(scenario)
    engine.close()
    assert scenario.losses
    if rank == 0:
        torch.save(scenario.model.module.state_dict(), out)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_step_equals_single_process_on_union_batch(tmp_path):
    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp"), str(tmp_path / "ddp.pt")), nprocs=2)
    cfg = _cfg(tmp_path / "single", iterations=1, batch_size=4, **{"optim.name": "sgd", "optim.momentum": 0.0})
    single, _ = _run(cfg, with_noise_layers=False)
    ddp = torch.load(tmp_path / "ddp.pt")
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-5, atol=1e-6)


def test_poly_schedule_matches_formula(tmp_path):
    from mtlda.scenarios.optim import lr_factor

    cfg = _cfg(tmp_path).optim
    assert lr_factor(cfg, 0, 100) == 1.0
    assert lr_factor(cfg, 50, 100) == pytest.approx(0.5**0.9)
    assert lr_factor(cfg, 100, 100) == 0.0
    step = load_config(None, ["optim.schedule=step", "optim.step_at=[30, 60]"]).optim
    assert [lr_factor(step, i, 100) for i in (29, 30, 59, 60)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_bf16_autocast_runs_and_keeps_fp32_weights(tmp_path):
    cfg = _cfg(tmp_path, iterations=2, **{"train.amp": "true"})
    engine = Engine(cfg, tmp_path, torch.device("cpu"), show_progress=False)
    assert engine.use_amp and not engine.scaler.is_enabled()  # no GradScaler for bf16 / on the CPU
    with engine.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    scenario, _ = _run(cfg)
    assert all(p.dtype == torch.float32 for p in scenario.model.parameters())
    assert all(math.isfinite(v) for v in scenario.losses)


class ScriptedScenario(ToyScenario):
    """Validation scores by iteration (``scores``), selection ``key`` (higher better with ``higher``); a crash
    (an exception, no save) during step ``crash_at + 1``; a square root at 0 (finite loss, NaN gradient) in step
    ``nan_gradient_at + 1``."""

    def __init__(self, cfg, engine, scores=None, key="toy/mse", higher=False, crash_at=None, nan_gradient_at=None):
        super().__init__(cfg, engine)
        self.scores, self.key, self.higher = scores or {}, key, higher
        self.crash_at, self.nan_gradient_at = crash_at, nan_gradient_at

    def train_step(self, batch, engine):
        if engine.iteration == self.crash_at:
            raise RuntimeError("simulated crash")
        if engine.iteration != self.nan_gradient_at:
            return super().train_step(batch, engine)
        weight = self.model[0].weight
        loss = nn.functional.mse_loss(self.model(batch[0]), batch[1]) + ((weight - weight.detach()) ** 2).sum().sqrt()
        engine.backward(loss)
        return StepOutput({"total": loss.detach()}, loss.detach())

    def validate(self, engine):
        return {self.key: self.scores.get(engine.iteration, 9.0)}

    def selection(self):
        return self.key, self.higher


def _scripted(cfg, resume=False, **kw):
    engine = Engine(cfg, Path(cfg.workdir), torch.device("cpu"), show_progress=False)
    try:
        engine.fit(ScriptedScenario(cfg, engine, **kw), resume=resume)
    finally:
        engine.close()
    return engine


def test_best_checkpoint_is_the_same_after_a_crash_and_resume(tmp_path):
    """last.pt written at a validation iteration knows that validation's best score: a resumed run keeps best.pt."""
    scores = {3: 1.0, 6: 0.5, 9: 0.8, 10: 0.9}
    extra = {"train.val_every": 3, "train.checkpoint_every": 3}
    _scripted(_cfg(tmp_path / "full", iterations=10, **extra), scores=scores)
    assert load_checkpoint(tmp_path / "full" / "best.pt")["iteration"] == 6
    with pytest.raises(RuntimeError, match="simulated crash"):
        _scripted(_cfg(tmp_path / "split", iterations=10, **extra), scores=scores, crash_at=7)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["best"] == {"metric": "toy/mse", "value": 0.5,
                                                                      "iteration": 6}
    _scripted(_cfg(tmp_path / "split", iterations=10, **extra), resume=True, scores=scores)
    assert load_checkpoint(tmp_path / "split" / "best.pt")["iteration"] == 6


def test_best_score_starts_again_when_the_selection_metric_changes(tmp_path):
    extra = {"train.val_every": 2, "train.checkpoint_every": 2}
    _scripted(_cfg(tmp_path, iterations=4, **extra), scores={2: 40.0, 4: 30.0}, key="semseg/miou", higher=True)
    engine = Engine(_cfg(tmp_path, iterations=8, **extra), tmp_path, torch.device("cpu"), show_progress=False)
    engine.fit(ScriptedScenario(engine.cfg, engine, scores={6: 1.0, 8: 2.0}, key="delta", higher=True),
               resume=True, allow_changed=["train.iterations"])
    engine.close()
    assert load_checkpoint(tmp_path / "best.pt")["best"] == {"metric": "delta", "value": 2.0, "iteration": 8}
    assert "the selection metric is now delta (was semseg/miou" in (tmp_path / "log.txt").read_text()


def test_a_non_finite_gradient_of_a_finite_loss_stops_before_any_weight_changes(tmp_path):
    cfg = _cfg(tmp_path, iterations=8, **{"optim.grad_clip": 0, "train.checkpoint_every": 1})
    engine = Engine(cfg, tmp_path, torch.device("cpu"), show_progress=False)
    scenario = ScriptedScenario(cfg, engine, nan_gradient_at=3)
    with pytest.raises(TrainingError, match=r"non-finite gradient at iteration 4 \(of a finite loss.*last.pt holds "
                                            r"iteration 3"):
        engine.fit(scenario)
    engine.close()
    assert all(torch.isfinite(p).all() for p in scenario.model.parameters())
    saved = load_checkpoint(tmp_path / "last.pt")["modules"]["model"]
    assert all(torch.isfinite(value).all() for value in saved.values() if value.is_floating_point())


def test_logged_learning_rate_is_the_one_the_step_used(tmp_path):
    _run(_cfg(tmp_path, iterations=4, **{"train.log_every": 1}))
    rows = [line.split(",") for line in (tmp_path / "scalars.csv").read_text().splitlines()[1:]]
    logged = [float(value) for step, tag, value, _ in rows if tag == "lr/model/decoders"]
    assert logged == pytest.approx([0.05 * (1 - i / 4) ** 0.9 for i in range(4)])


SIGTERM_WITH_WORKERS = """
import multiprocessing, os, signal, sys, time
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
from test_engine import NoisyPairs, ToyScenario, _cfg, stack
from mtlda.data.sampling import infinite_batches
from mtlda.scenarios.engine import Engine

class SlowPairs(NoisyPairs):
    def __getitem__(self, i):
        time.sleep(0.2)
        return super().__getitem__(i)

class WithWorkers(ToyScenario):
    def train_batches(self, start):
        return infinite_batches(SlowPairs(), 4, 0, start, stack, workers=2)

    def train_step(self, batch, engine):
        if engine.iteration == 2:
            os.killpg(os.getpgrp(), signal.SIGTERM)  # what a batch scheduler does: the whole process group
            time.sleep(1.0)
            print("workers alive after the signal:", len(multiprocessing.active_children()))
        return super().train_step(batch, engine)

cfg = _cfg(Path({workdir!r}), iterations=50)
engine = Engine(cfg, Path(cfg.workdir), torch.device("cpu"), show_progress=False)
try:
    engine.fit(WithWorkers(cfg, engine))
except BaseException as err:
    print(type(err).__name__, err)
"""


def test_sigterm_to_the_process_group_with_loader_workers_saves_and_stops(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(SIGTERM_WITH_WORKERS.format(tests=str(Path(__file__).parent), workdir=str(tmp_path / "run")))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          start_new_session=True)
    assert "workers alive after the signal: 2" in done.stdout, done.stdout + done.stderr
    assert "Interrupted stopped by SIGTERM after iteration 3" in done.stdout, done.stdout + done.stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 3


def test_tensorboard_drops_the_steps_a_resumed_run_logs_again(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    extra = {"train.val_every": 0, "train.checkpoint_every": 3, "train.log_every": 1}
    with pytest.raises(RuntimeError, match="simulated crash"):
        _scripted(_cfg(tmp_path, iterations=10, **extra), crash_at=7)  # steps 1-7 logged, last.pt at 6
    _scripted(_cfg(tmp_path, iterations=10, **extra), resume=True)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/total")] == list(range(1, 11))


class FailingValidation(ScriptedScenario):
    def validate(self, engine):
        raise RuntimeError("validation out of memory")


def test_a_failing_validation_keeps_the_checkpoint_of_its_iteration(tmp_path):
    cfg = _cfg(tmp_path, iterations=6, **{"train.val_every": 3, "train.checkpoint_every": 3})
    engine = Engine(cfg, tmp_path, torch.device("cpu"), show_progress=False)
    with pytest.raises(RuntimeError, match="validation out of memory"):
        engine.fit(FailingValidation(cfg, engine))
    engine.close()
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 3


class Unwrapped(ToyScenario):
    def wrap_for_distributed(self, engine):
        pass


def test_a_folder_that_holds_a_run_is_not_started_over_by_any_rank(tmp_path):
    _run(_cfg(tmp_path, iterations=3))
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(UserInputError, match="already holds a run: continue it with --resume"):
        _run(_cfg(tmp_path, iterations=3, **{"optim.lr.decoders": 0.01}))
    cfg = _cfg(tmp_path, iterations=3)
    engine = Engine(cfg, tmp_path, torch.device("cpu"), dist=DistInfo(rank=1, world_size=2), show_progress=False)
    with pytest.raises(UserInputError, match="already holds a run"):  # not only the main rank
        engine.fit(Unwrapped(cfg, engine))
    assert (tmp_path / "last.pt").read_bytes() == before
    (tmp_path / "last.pt").unlink()
    (tmp_path / "results.json").write_text("{}")  # what the runner writes after a finished run
    with pytest.raises(UserInputError, match="already holds a run: its last.pt is gone: start this run in another"):
        _run(_cfg(tmp_path, iterations=3))  # results.json alone


LEFT_OPEN_LOADER = """
import torch
from mtlda.data.sampling import infinite_batches
batches = infinite_batches(torch.zeros(16, 2), 4, 0, 0, torch.stack, workers=2)
next(batches)  # left open at exit, as after an exception whose traceback keeps the generator alive
print("exiting")
"""


def test_a_process_exits_with_its_loader_workers_still_open():
    """At exit multiprocessing ends the workers with SIGTERM: a worker that ignored it would hang the process."""
    done = subprocess.run([sys.executable, "-c", LEFT_OPEN_LOADER], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "exiting" in done.stdout, done.stderr
