"""The training engine shared by every scenario: loop, optimisers, schedules, AMP, DDP, checkpoints, logging.

A scenario (supervised, UDA, SDE) subclasses :class:`Scenario` and supplies its modules, its parameter groups,
its batches, one training step and a validation pass. The engine owns everything else, so no scenario writes
its own loop.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mtlda.config import save_config, to_dict
from mtlda.scenarios.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from mtlda.scenarios.distributed import DistInfo
from mtlda.scenarios.optim import build_optimizer, build_scheduler
from mtlda.schema import ExperimentConfig, OptimConfig


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message says what happened and what to try."""


@dataclass
class OptimizerSpec:
    """Parameter groups of one optimiser and its settings; ``clip`` applies ``settings.grad_clip``."""

    groups: Mapping[str, Sequence[nn.Parameter]]
    settings: OptimConfig
    clip: bool = True


@dataclass
class StepOutput:
    """What a training step reports: scalar terms to log (detached) and the main loss for the progress bar."""

    terms: dict[str, float]
    loss: float


class Scenario:
    """What a scenario supplies to the :class:`Engine`."""

    def modules(self) -> dict[str, nn.Module]:
        """Named modules saved in checkpoints (e.g. ``model``, ``discriminators``)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, OptimizerSpec]:
        raise NotImplementedError

    def train_batches(self, start_iteration: int) -> Iterator[Any]:
        """Training batches from iteration ``start_iteration`` on, in a seed-determined order."""
        raise NotImplementedError

    def train_step(self, batch: Any, engine: "Engine") -> StepOutput:
        """Forward and ``engine.backward(...)``; the engine clips and steps every optimiser afterwards."""
        raise NotImplementedError

    def validate(self, engine: "Engine") -> dict[str, float]:
        """Metrics on the validation split, named ``task/metric`` (plus ``delta`` for multi-task runs)."""
        raise NotImplementedError

    def higher_is_better(self, metric: str) -> bool:
        raise NotImplementedError

    def image_panels(self, engine: "Engine") -> dict[str, torch.Tensor]:
        """(3, H, W) float images for TensorBoard; empty by default."""
        return {}

    def wrap_for_distributed(self, engine: "Engine") -> None:
        """Wrap trainable modules in DistributedDataParallel (called once when the world size is > 1)."""


@dataclass
class Engine:
    cfg: ExperimentConfig
    workdir: Path
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.iteration = 0
        self.best: dict[str, Any] = {}
        self.writer: SummaryWriter | None = None
        self.scenario: Scenario | None = None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.clip: dict[str, float] = {}
        amp = self.cfg.train.amp
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.train.amp_dtype)
        if amp and self.amp_dtype is None:
            raise ValueError(f"train.amp_dtype must be bf16 or fp16, got {self.cfg.train.amp_dtype!r}")
        self.use_amp = amp
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=amp and self.amp_dtype == torch.float16 and self.device.type == "cuda"
        )

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    # ----------------------------------------------------------------------------------------- set-up
    def attach(self, scenario: Scenario) -> None:
        self.scenario = scenario
        total = self.cfg.train.iterations
        for name, spec in scenario.optimizers().items():
            opt = build_optimizer(spec.groups, spec.settings)
            self.optimizers[name] = opt
            self.schedulers[name] = build_scheduler(opt, spec.settings, total)
            self.clip[name] = spec.settings.grad_clip if spec.clip else 0.0
        if self.dist.enabled:
            scenario.wrap_for_distributed(self)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes when ``--amp`` is on; a no-op otherwise."""
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def _check_finite(self, out: StepOutput) -> None:
        bad = {k: v for k, v in out.terms.items() if not math.isfinite(v)}
        if bad or not math.isfinite(out.loss):
            raise TrainingError(
                f"non-finite loss at iteration {self.iteration}: {bad or {'loss': out.loss}}; "
                f"{self.workdir / 'last.pt'} holds the last good state: lower the learning rates "
                "(optim.lr.*), keep optim.grad_clip > 0 or check the data, then run again with --resume"
            )

    def _optimizer_step(self) -> None:
        for name, opt in self.optimizers.items():
            if self.clip[name] > 0:
                self.scaler.unscale_(opt)
                params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, self.clip[name])
            self.scaler.step(opt)
        self.scaler.update()
        for name, opt in self.optimizers.items():
            opt.zero_grad(set_to_none=True)
            self.schedulers[name].step()

    # ----------------------------------------------------------------------------------- checkpoints
    def state(self, rng: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything a resumed run needs; ``rng`` overrides the current RNG state (used after a Ctrl-C)."""
        assert self.scenario is not None
        return {
            "iteration": self.iteration,
            "modules": {k: unwrap(m).state_dict() for k, m in self.scenario.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": rng or rng_state(),
            "best": dict(self.best),
            "config": to_dict(self.cfg),
        }

    def save(self, name: str = "last.pt", rng: dict[str, Any] | None = None) -> Path:
        path = self.workdir / name
        if self.is_main:
            save_atomic(self.state(rng), path)
        return path

    def load_modules(self, ckpt: Mapping[str, Any], names: Sequence[str] | None = None) -> None:
        """Load the named modules' weights (all of the scenario's modules by default), strictly."""
        assert self.scenario is not None
        modules = self.scenario.modules()
        for name in names or list(modules):
            if name not in ckpt["modules"]:
                raise CheckpointError(f"the checkpoint has no {name!r} weights (it has {sorted(ckpt['modules'])})")
            try:
                unwrap(modules[name]).load_state_dict(ckpt["modules"][name])
            except RuntimeError as err:
                first = str(err).splitlines()[0]
                raise CheckpointError(
                    f"the checkpoint's {name!r} weights do not fit this model ({first}); "
                    "use the experiment file and --set options the checkpoint was trained with"
                ) from None

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, self.device)
        self.load_modules(ckpt)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][key])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(ckpt["schedulers"][key])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.iteration = int(ckpt["iteration"])
        self.best = dict(ckpt.get("best", {}))

    # -------------------------------------------------------------------------------------- logging
    def log_scalars(self, prefix: str, values: Mapping[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, self.iteration)

    def _log_images(self) -> None:
        assert self.scenario is not None
        if self.writer is None:
            return
        for name, image in self.scenario.image_panels(self).items():
            self.writer.add_image(name, image.clamp(0, 1), self.iteration)

    # ------------------------------------------------------------------------------------- the loop
    def validate(self) -> dict[str, float]:
        assert self.scenario is not None
        metrics = self.scenario.validate(self)
        if self.is_main:
            self.log_scalars("val", metrics)
            self._update_best(metrics)
        return metrics

    def _update_best(self, metrics: Mapping[str, float]) -> None:
        assert self.scenario is not None
        key = self.cfg.train.selection_metric
        if key not in metrics:
            return
        value = metrics[key]
        better = self.scenario.higher_is_better(key)
        old = self.best.get("value")
        if old is None or (value > old if better else value < old):
            self.best = {"metric": key, "value": value, "iteration": self.iteration}
            self.save("best.pt")

    def fit(self, scenario: Scenario, resume: bool = False) -> dict[str, float]:
        """Train to ``train.iterations`` (continuing ``last.pt`` with ``resume``) and validate at the end."""
        self.attach(scenario)
        cfg = self.cfg.train
        last = self.workdir / "last.pt"
        if resume:
            if not last.is_file():
                raise CheckpointError(f"--resume: no {last} to continue from (run without --resume to start)")
            self.resume(last)
        else:
            seed_everything(self.cfg.seed + self.dist.rank)
        if self.is_main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.workdir / "config.yaml")
            self.writer = SummaryWriter(str(self.workdir / "tb"))
        metrics: dict[str, float] = {}
        if self.iteration >= cfg.iterations:
            return self.validate()
        batches = scenario.train_batches(self.iteration)
        bar = tqdm(total=cfg.iterations, initial=self.iteration, disable=not (self.is_main and self.show_progress),
                   dynamic_ncols=True, desc=self.cfg.name)
        interrupted = False
        rng_at_step_start: dict[str, Any] | None = None
        previous = signal.getsignal(signal.SIGTERM)
        if self.is_main:
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            while self.iteration < cfg.iterations:
                tic = time.perf_counter()
                rng_at_step_start = rng_state()
                batch = next(batches)
                out = scenario.train_step(batch, self)
                self._check_finite(out)
                self._optimizer_step()
                self.iteration += 1
                rng_at_step_start = None
                bar.update(1)
                if self.is_main and (self.iteration % cfg.log_every == 0 or self.iteration == 1):
                    self.log_scalars("train", out.terms)
                    self.log_scalars("time", {"iteration_s": time.perf_counter() - tic})
                    for name, opt in self.optimizers.items():
                        self.log_scalars(f"lr/{name}", {g["name"]: g["lr"] for g in opt.param_groups})
                    bar.set_postfix(loss=f"{out.loss:.4f}")
                if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0:
                    self.save()
                if self.iteration % cfg.val_every == 0 or self.iteration == cfg.iterations:
                    metrics = self.validate()
                if self.is_main and cfg.image_every and (
                    self.iteration % cfg.image_every == 0 or self.iteration == cfg.iterations
                ):
                    self._log_images()
        except KeyboardInterrupt:
            interrupted = True
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
        finally:
            bar.close()
            if self.is_main:
                signal.signal(signal.SIGTERM, previous)
        self.save(rng=rng_at_step_start if interrupted else None)
        if self.writer is not None:
            self.writer.flush()
        if interrupted:
            raise KeyboardInterrupt(f"stopped at iteration {self.iteration}; {last} saved (continue with --resume)")
        return metrics

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the module itself otherwise)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
