"""The training engine shared by every scenario: loop, optimisers, schedules, AMP, DDP, checkpoints, logging.

A scenario (supervised, UDA, SDE) subclasses :class:`~mtlda.scenarios.dense.DenseScenario` (the contract is
:class:`Scenario`) and supplies its modules, its parameter groups, its batches, one training step and a validation
pass. The engine owns everything else, so no scenario writes its own loop.

Guarantees: a run is a function of its config and seed; ``--resume`` from any checkpoint (validation iterations
included) continues exactly the uninterrupted run (validation and image panels never draw from the training RNG
streams); Ctrl-C / SIGTERM finish the current step, save ``last.pt`` and stop; checkpoints are written atomically
and loaded as data only. Image panels (``train.image_every``) go to TensorBoard and, the latest of each, to
``<workdir>/panels/*.png``.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mtlda.config import save_config, to_dict
from mtlda.distributed import (
    DistInfo,
    PeerFailure,
    all_reduce_mean,
    barrier,
    gather_objects,
    is_peer_failure,
    rank_local,
)
from mtlda.errors import UserInputError
from mtlda.panel_layout import write_picture
from mtlda.runlog import RunLogger, format_postfix
from mtlda.scenarios.checkpoint import (
    CheckpointError,
    isolated_rng,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    state_mismatch,
)
from mtlda.scenarios.contract import OptimizerSpec, Scenario, StepOutput, TrainingError
from mtlda.scenarios.interrupts import Interrupted, StopRequest
from mtlda.scenarios.optim import build_optimizer, build_scheduler, lr_factor
from mtlda.scenarios.resume_check import check_resume_config
from mtlda.schema import ExperimentConfig

PANELS_DIR = "panels"  # the latest image panels as PNG files, <name with / as _>.png


def _describe_checkpoint(path: Path, iteration: int | None) -> str:
    if iteration is not None:
        return f"{path} holds iteration {iteration}"
    return f"no checkpoint has been written yet ({path} does not exist)" if not path.is_file() else \
        f"{path} is from before this session"


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
        self.runlog: RunLogger | None = None
        self.scenario: Scenario | None = None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.specs: dict[str, OptimizerSpec] = {}
        self.saved: dict[str, int] = {}
        self.selection_metric: tuple[str, bool] | None = None
        cfg = self.cfg.train
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp_dtype)
        if cfg.amp and self.amp_dtype is None:
            raise UserInputError(f"train.amp_dtype must be bf16 or fp16, got {cfg.amp_dtype!r}")
        if cfg.amp and self.amp_dtype == torch.float16 and self.device.type != "cuda":
            raise UserInputError("fp16 autocast needs a CUDA GPU (loss scaling); on the CPU use train.amp_dtype=bf16")
        self.use_amp = cfg.amp
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=cfg.amp and self.amp_dtype == torch.float16 and self.device.type == "cuda"
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
            self.specs[name] = spec
            self.optimizers[name] = opt
            self.schedulers[name] = build_scheduler(opt, spec.settings, total)
        self.selection_metric = scenario.selection()
        if self.dist.enabled:
            scenario.wrap_for_distributed(self)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes when ``--amp`` is on; a no-op otherwise."""
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def _optimizer_step(self) -> None:
        """Clip, check and step every optimiser. Without loss scaling a non-finite gradient (which a finite loss
        can have) stops the run before any weight changes; with fp16 loss scaling GradScaler skips such steps."""
        assert self.scenario is not None
        self.scenario.synchronise_gradients(self)
        norms: dict[str, Tensor] = {}
        idle = set()
        for name, opt in self.optimizers.items():
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if not params:
                idle.add(name)
                continue
            clip = self.specs[name].settings.grad_clip if self.specs[name].clip else 0.0
            if clip > 0:
                self.scaler.unscale_(opt)
                norms[name] = torch.nn.utils.clip_grad_norm_(params, clip)
            elif not self.scaler.is_enabled():
                norms[name] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        if not self.scaler.is_enabled():
            self._check_finite_gradients(norms)
        for name, opt in self.optimizers.items():
            if name in idle:
                opt.step()  # no gradient reached it (source-only UDA's discriminators): a no-op that GradScaler refuses
                continue
            self.scaler.step(opt)
        self.scaler.update()
        for name, opt in self.optimizers.items():
            opt.zero_grad(set_to_none=True)
            self.schedulers[name].step()

    def _apply_learning_rates(self) -> None:
        """Base learning rates from the config (after a resume that allowed changing them)."""
        for name, opt in self.optimizers.items():
            settings = self.specs[name].settings
            scheduler = self.schedulers[name]
            factor = lr_factor(settings, self.iteration, self.cfg.train.iterations)
            base = [settings.lr[group["name"]] for group in opt.param_groups]
            scheduler.base_lrs = list(base)
            for group, lr in zip(opt.param_groups, base):
                group["initial_lr"] = lr
                group["lr"] = lr * factor

    # ----------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs (every rank's RNG state, gathered to rank 0)."""
        assert self.scenario is not None
        return {
            "iteration": self.iteration,
            "modules": {k: unwrap(m).state_dict() for k, m in self.scenario.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": gather_objects(rng_state()),
            "best": dict(self.best),
            "config": to_dict(self.cfg),
            "metadata": self.scenario.metadata(),
        }

    def save(self, name: str = "last.pt") -> Path:
        """Write a checkpoint (on the main process); every rank returns once it is on disk."""
        path = self.workdir / name
        state = self.state()
        if self.is_main:
            save_checkpoint(state, path)
        self.saved[name] = self.iteration
        barrier()
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
                raise CheckpointError(
                    f"the checkpoint's {name!r} weights do not fit this model ({state_mismatch(err)}); "
                    "use the experiment file and --set options the checkpoint was trained with"
                ) from None

    def resume(self, path: Path, allow_changed: Sequence[str] = ()) -> dict[str, tuple[Any, Any]]:
        """Continue the run of ``path``; returns the config changes that were allowed."""
        ckpt = load_checkpoint(path, self.device)
        if not all(key in ckpt for key in ("optimizers", "schedulers", "scaler", "rng", "iteration")):
            raise CheckpointError(f"{path}: this is a weights-only file: it cannot resume training; start a new run "
                                  "(or use it with --evaluate / mtlda predict)")
        changes = check_resume_config(ckpt.get("config", {}), self.cfg, allow_changed)
        self.load_modules(ckpt)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][key])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(ckpt["schedulers"][key])
        self.scaler.load_state_dict(ckpt["scaler"])
        states = ckpt["rng"]
        set_rng_state(states[self.dist.rank] if self.dist.rank < len(states) else states[0])
        self.iteration = int(ckpt["iteration"])
        self.best = dict(ckpt.get("best", {}))
        self.saved["last.pt"] = self.iteration
        self._apply_learning_rates()
        return changes

    # -------------------------------------------------------------------------------------- logging
    def log_scalars(self, prefix: str, values: Mapping[str, float]) -> None:
        """TensorBoard scalars and the run's ``scalars.csv`` (main process only)."""
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, self.iteration)
        if self.runlog is not None:
            self.runlog.log_scalars(self.iteration, {f"{prefix}/{k}": v for k, v in values.items()})

    def _log_images(self) -> None:
        assert self.scenario is not None
        with isolated_rng(), rank_local():
            panels = self.scenario.image_panels(self)
        if self.writer is not None:
            for name, image in panels.items():
                self.writer.add_image(name, image.clamp(0, 1), self.iteration)
                write_picture(self.workdir / PANELS_DIR / f"{name.replace('/', '_')}.png", image)

    def _learning_rates(self) -> dict[str, dict[str, float]]:
        """Optimiser -> parameter group -> the learning rate of the coming step."""
        return {name: {g["name"]: g["lr"] for g in opt.param_groups} for name, opt in self.optimizers.items()}

    def _log_training(self, out: StepOutput, rates: Mapping[str, Mapping[str, float]], seconds: float,
                      bar: tqdm) -> None:
        """Global (rank-averaged) loss terms and the learning rates ``rates`` the step used; one host transfer."""
        names = sorted(out.terms)
        values = all_reduce_mean([torch.stack([out.terms[n].detach().float() for n in names])])[0].tolist()
        terms = dict(zip(names, values))
        if not self.is_main:
            return
        self.log_scalars("train", terms)
        self.log_scalars("time", {"iteration_s": seconds})
        lrs = {}
        for name, group_lrs in rates.items():
            self.log_scalars(f"lr/{name}", group_lrs)
            lrs.update({f"{name}/{k}" if len(rates) > 1 else k: v for k, v in group_lrs.items()})
        bar.set_postfix_str(format_postfix(terms, lrs))
        if self.runlog is not None:
            self.runlog.log_training(self.iteration, self.cfg.train.iterations, terms, lrs, seconds)

    # ------------------------------------------------------------------------------------- the loop
    def validate(self) -> dict[str, float]:
        assert self.scenario is not None
        with isolated_rng():
            metrics = self.scenario.validate(self)
        self.log_scalars("val", metrics)
        if self.runlog is not None:
            self.runlog.log_validation(self.iteration, metrics)
        self._update_best(metrics)
        return metrics

    def _update_best(self, metrics: Mapping[str, float]) -> None:
        """Write ``best.pt`` when the selection metric improved (every rank decides alike: metrics are global)."""
        assert self.selection_metric is not None
        key, better = self.selection_metric
        value = metrics.get(key)
        if value is None or not math.isfinite(value):
            return
        old = self.best.get("value")
        if old is not None and self.best.get("metric") != key:
            if self.runlog is not None:
                self.runlog.info(f"best.pt: the selection metric is now {key} (was {self.best.get('metric')}, "
                                 f"best at iteration {self.best.get('iteration')}); the best score starts again")
            old = None
        if old is None or (value > old if better else value < old):
            self.best = {"metric": key, "value": value, "iteration": self.iteration}
            self.save("best.pt")

    def _check_finite(self, out: StepOutput) -> None:
        if bool(torch.isfinite(out.loss)):
            return
        bad = {k: float(v) for k, v in out.terms.items() if not math.isfinite(float(v))}
        self._stop_non_finite("loss", str(bad or {"loss": float(out.loss)}))

    def _check_finite_gradients(self, norms: Mapping[str, Tensor]) -> None:
        """Stop on a non-finite gradient norm (one host transfer for every optimiser; none on the ``meta`` device,
        whose tensors hold no values)."""
        if not norms or any(norm.is_meta for norm in norms.values()):
            return
        values = torch.stack([norm.float() for norm in norms.values()]).tolist()
        bad = {name: value for name, value in zip(norms, values) if not math.isfinite(value)}
        if bad:
            self._stop_non_finite("gradient", f"of a finite loss: gradient norm by optimiser {bad}")

    def _stop_non_finite(self, what: str, detail: str) -> None:
        last = self.workdir / "last.pt"
        raise TrainingError(
            f"non-finite {what} at iteration {self.iteration + 1} ({detail}); nothing was saved from it: "
            f"{_describe_checkpoint(last, self.saved.get('last.pt'))}; lower the learning rates (optim.lr.*), keep "
            "optim.grad_clip > 0 or check the data (and any loss term with an unbounded gradient, e.g. a square "
            "root at 0), then --resume (or start again if the losses before it were already diverging)"
        )

    def _prepare_workdir(self, resume: bool) -> None:
        if self.workdir.exists() and not self.workdir.is_dir():
            raise UserInputError(f"--workdir {self.workdir} is a file, not a folder: choose another --workdir")
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            probe = self.workdir / f".write-test-{self.dist.rank}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise UserInputError(f"cannot write into the run folder {self.workdir} ({err.strerror or err}); "
                                 "choose a writable --workdir") from None

    def fit(self, scenario: Scenario, resume: bool = False, allow_changed: Sequence[str] = ()) -> dict[str, float]:
        """Train to ``train.iterations`` (continuing ``last.pt`` with ``resume``) and validate at the end."""
        self.attach(scenario)
        cfg = self.cfg.train
        last = self.workdir / "last.pt"
        if not resume and (last.is_file() or (self.workdir / "results.json").is_file()):
            # Every rank looks (the files are shared), so all stop alike.
            how = "continue it with --resume, or start" if last.is_file() else "its last.pt is gone: start"
            raise UserInputError(
                f"{self.workdir} already holds a run: {how} this run in another folder (--workdir, --seed or "
                "--set name=...), or delete that folder first"
            )
        if self.is_main:
            self._prepare_workdir(resume)
        if resume:
            if not last.is_file():
                raise CheckpointError(f"--resume: no {last} to continue from (run without --resume to start)")
            self.resume(last, allow_changed)
        else:
            seed_everything(self.cfg.seed + self.dist.rank)
        if self.is_main:
            save_config(self.cfg, self.workdir / "config.yaml")
            # A resumed run drops the events logged after its checkpoint (they are logged again).
            self.writer = SummaryWriter(str(self.workdir / "tb"), purge_step=self.iteration + 1 if resume else None)
            self.runlog = RunLogger(self.workdir, resume_from=self.iteration if resume else None)
            self.runlog.log_config(to_dict(self.cfg))
        if self.iteration >= cfg.iterations:
            return self.validate()
        metrics: dict[str, float] = {}
        batches = scenario.train_batches(self.iteration)
        bar = tqdm(total=cfg.iterations, initial=self.iteration, disable=not (self.is_main and self.show_progress),
                   dynamic_ncols=True, desc=self.cfg.name)
        with StopRequest() as stop:
            try:
                while self.iteration < cfg.iterations:
                    tic = time.perf_counter()
                    out = scenario.train_step(next(batches), self)
                    self._check_finite(out)
                    rates = self._learning_rates()
                    self._optimizer_step()
                    scenario.after_step(self)
                    self.iteration += 1
                    bar.update(1)
                    if self.iteration % cfg.log_every == 0 or self.iteration == 1:
                        self._log_training(out, rates, time.perf_counter() - tic, bar)
                    periodic = bool(cfg.checkpoint_every) and self.iteration % cfg.checkpoint_every == 0
                    if periodic:
                        self.save()
                    if (cfg.val_every and self.iteration % cfg.val_every == 0) or self.iteration == cfg.iterations:
                        best = dict(self.best)
                        metrics = self.validate()
                        if periodic and self.best != best:
                            self.save()  # last.pt knows the best score it produced (a resume keeps best.pt)
                    if cfg.image_every and self.is_main and (
                            self.iteration % cfg.image_every == 0 or self.iteration == cfg.iterations):
                        self._log_images()
                    if stop.agreed(self.device) and self.iteration < cfg.iterations:
                        self.save()
                        raise Interrupted(f"stopped by {stop.signal_name or 'a peer'} after iteration "
                                          f"{self.iteration}; {last} saved (continue with --resume)")
            except KeyboardInterrupt as err:
                if isinstance(err, Interrupted):
                    raise
                raise Interrupted(f"stopped at once during iteration {self.iteration + 1} (second signal): "
                                  f"nothing saved from it; {_describe_checkpoint(last, self.saved.get('last.pt'))}"
                                  ) from None
            except Exception as err:
                if is_peer_failure(err):
                    detail = re.sub(r"^\[[^\]]*\]\s*", "", str(err).splitlines()[0])[:160]  # gloo's [file:line] dropped
                    raise PeerFailure(
                        f"a peer process of this torchrun run failed during iteration {self.iteration + 1} "
                        f"({detail}); {_describe_checkpoint(last, self.saved.get('last.pt'))}"
                        ": restart every process with --resume") from None
                raise
            finally:
                bar.close()
        if self.saved.get("last.pt") != self.iteration:  # not already written after this iteration's validation
            self.save()
        if self.writer is not None:
            self.writer.flush()
        return metrics

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.runlog is not None:
            self.runlog.close()
            self.runlog = None


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the module itself otherwise)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
