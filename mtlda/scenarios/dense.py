"""The dense-scenario base: what the supervised, UDA and SDE scenarios share.

:class:`DenseScenario` owns the tasks, the data splits, the model (built after seeding, so a run is a function of
its seed), the single-task references, validation, image panels, the selection metric, synchronised BatchNorm, the
multi-process set-up and the inference model. A scenario states only what differs: its heads, its training
batches, its training step and its extra modules (discriminators, pose network).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from mtlda.data.batch import Batch, collate
from mtlda.data.registry import DatasetInfo, build_dataset, dataset_info
from mtlda.data.sampling import infinite_batches, own_process_group
from mtlda.distributed import (
    average_gradients_,
    broadcast_buffers_,
    convert_sync_batchnorm,
    ddp_options,
    loader_workers,
    local_batch_size,
)
from mtlda.errors import UserInputError
from mtlda.models.decoder import HeadSpec
from mtlda.models.memory_format import to_channels_last
from mtlda.models.network import MultiTaskNet, build_network
from mtlda.references import ReferenceBook, ReferenceKey
from mtlda.scenarios.checkpoint import isolated_rng, seed_everything
from mtlda.scenarios.engine import Engine, OptimizerSpec, Scenario, unwrap
from mtlda.scenarios.evaluation import evaluate, flatten_metrics
from mtlda.scenarios.panels import prediction_panel
from mtlda.schema import DataConfig, ExperimentConfig
from mtlda.tasks import Task, build_tasks, task_weights
from mtlda.weighting import Weighting, build_weighting, rank_mean_losses, weighted_backward
from mtlda.weighting.gradients import reached_parameters

PANEL_IMAGES = 4
PANEL_SEED = 0


def input_size(data: DataConfig, train: bool) -> tuple[int, int]:
    """(H, W) of the network input for training (the crop, if any) or evaluation."""
    if train:
        return (data.crop[0], data.crop[1]) if data.crop else (data.height, data.width)
    return (data.val_height or data.height, data.val_width or data.width)


def target_names(tasks: Mapping[str, Task]) -> list[str]:
    """The targets a data set must provide to score ``tasks`` (e.g. ground-truth depth for ``disp``)."""
    return sorted({task.target_name for task in tasks.values()})


def evaluated_part(dataset: Dataset, data: DataConfig) -> Dataset:
    """The samples of a validation ``dataset`` that are scored: the first ``data.max_val_samples`` (0: all)."""
    if data.max_val_samples and len(dataset) > data.max_val_samples:
        return Subset(dataset, range(data.max_val_samples))
    return dataset


class DenseScenario(Scenario):
    """Base of the dense scenarios. ``train=False`` builds what evaluation needs (no training split);
    ``with_data=False`` builds no data split at all (prediction on arbitrary images)."""

    name: ClassVar[str]
    # Whether the network may be wrapped in DistributedDataParallel under torchrun; scenarios that run it several
    # times per step (UDA: source and target passes) average its gradients themselves instead, as do
    # gradient-level task weightings (they need every task's gradient before combining).
    ddp_model: ClassVar[bool] = True

    def __init__(self, cfg: ExperimentConfig, engine: Engine, train: bool = True, with_data: bool = True) -> None:
        self.cfg, self.engine, self.training = cfg, engine, train and with_data
        seed_everything(cfg.seed)
        self.check_config(train)
        self.info: DatasetInfo = dataset_info(cfg.data)
        self.tasks: dict[str, Task] = self.build_tasks()
        self.weights = self.task_weights()
        self.weighting: Weighting = self.build_weighting().to(engine.device)
        self._step_losses: dict[str, Tensor] = {}
        self._split: tuple[dict[str, nn.Parameter], list[nn.Parameter]] | None = None
        self.train_split: Dataset | None = None
        self.val_split: Dataset | None = None
        if with_data:
            self.train_split = self.build_split(cfg.data, cfg.data.train_split, True) if train else None
            self.val_split = self.build_split(cfg.data, cfg.data.val_split, False)
        self.model: nn.Module = self.build_model()
        self.extra: dict[str, nn.Module] = self.build_extra_modules(self.training)
        if cfg.model.sync_bn and engine.dist.enabled:
            self.extra = {name: convert_sync_batchnorm(module) for name, module in self.extra.items()}
        self.references = ReferenceBook(cfg, self.reference_key(), self.tasks)
        self.last_results: dict[str, dict[str, float]] = {}
        self.last_details: dict[str, dict[str, Any]] = {}
        self._panel_batches: dict[str, Batch] = {}

    # ------------------------------------------------------------------------------ what scenarios state
    def check_config(self, train: bool) -> None:
        """Raise UserInputError naming the key to fix when the config cannot run this scenario."""

    def build_tasks(self) -> dict[str, Task]:
        return build_tasks(self.cfg, self.info)

    def task_weights(self) -> dict[str, float]:
        return task_weights(self.cfg.tasks)

    def build_weighting(self) -> Weighting:
        """The task-balancing method of ``tasks.weighting`` ({name, ...options}) over this scenario's tasks."""
        options = dict(self.cfg.tasks.weighting)
        name = options.pop("name", "fixed")
        return build_weighting(name, list(self.tasks), self.weights, options)

    def heads(self) -> dict[str, HeadSpec]:
        """Prediction heads by task: every task at ``model.scales``."""
        scales = tuple(sorted(self.cfg.model.scales))
        return {name: HeadSpec(task.out_channels, scales) for name, task in self.tasks.items()}

    def build_extra_modules(self, train: bool) -> dict[str, nn.Module]:
        """Modules besides the network (saved in checkpoints, gradients averaged over ranks by the scenario)."""
        return {}

    def reference_setting(self) -> str:
        """What distinguishes this scenario's references beyond scenario and data set (e.g. the UDA source)."""
        return ""

    def train_step(self, batch: Any, engine: Engine):
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ set-up
    def build_split(self, data: DataConfig, split: str, train: bool) -> Dataset:
        targets = sorted(self.tasks) if train else target_names(self.tasks)
        dataset = build_dataset(data, split, train=train, tasks=targets)
        return dataset if train else evaluated_part(dataset, data)

    def build_model(self) -> nn.Module:
        """The network on the engine's device: synchronised BatchNorm under torchrun (``model.sync_bn``); for
        training, activation checkpointing (``model.checkpointing``), channels_last (``train.channels_last``) and
        ``torch.compile`` (``train.compile``) as configured (inference and export builds keep the plain network)."""
        cfg = self.cfg
        checkpointing = cfg.model.checkpointing if self.training else "none"
        model: MultiTaskNet = build_network(cfg.model, self.heads(), checkpointing=checkpointing).to(self.engine.device)
        model.valid_input_size(*input_size(cfg.data, train=self.training))
        if cfg.model.sync_bn and self.engine.dist.enabled:
            model = convert_sync_batchnorm(model)
        if cfg.train.channels_last and self.training:
            to_channels_last(model)
        if cfg.train.compile and self.training:
            model.compile()
        return model

    def reference_key(self) -> ReferenceKey:
        """What the run's numbers may be compared with: scenario, data set and the part of it scored, classes,
        resolution, setting, kind."""
        h, w = input_size(self.cfg.data, train=False)
        data = self.cfg.data
        scored = [f"split {data.val_split}"] if data.val_split != DataConfig.val_split else []
        scored += [f"first {data.max_val_samples}"] if data.max_val_samples else []
        dataset = self.info.name + (f" ({', '.join(scored)})" if scored else "")
        return ReferenceKey(self.cfg.scenario, dataset, self.info.num_classes, f"{h}x{w}", self.reference_setting(),
                            self.cfg.references.kind)

    # ---------------------------------------------------------------------------- the engine contract
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, **self.extra, "weighting": self.weighting}

    def model_param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The network's optimiser groups, plus ``weighting`` for learnable task weights (``optim.lr.weighting``,
        by default the decoders' rate)."""
        groups = dict(unwrap(self.model).param_groups())
        learnable = [p for p in self.weighting.parameters() if p.requires_grad]
        if learnable:
            groups["weighting"] = learnable
        return groups

    def optim_settings(self):
        lr = dict(self.cfg.optim.lr)
        lr.setdefault("weighting", lr.get("decoders", 0.0))
        return replace(self.cfg.optim, lr=lr)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"model": OptimizerSpec(self.model_param_groups(), self.optim_settings())}

    @property
    def uses_ddp(self) -> bool:
        return self.ddp_model and self.weighting.level == "loss"

    def wrap_for_distributed(self, engine: Engine) -> None:
        if self.uses_ddp:
            self.model = nn.parallel.DistributedDataParallel(self.model, **ddp_options(engine.device))

    def synchronise_gradients(self, engine: Engine) -> None:
        """Under torchrun, before the optimiser step: average the gradients of the modules DDP does not wrap and
        give them rank 0's buffers (DDP does both for the network it wraps)."""
        if not engine.dist.enabled:
            return
        modules = [*self.extra.values(), self.weighting] + ([] if self.uses_ddp else [self.model])
        average_gradients_(p for module in modules for p in module.parameters())
        broadcast_buffers_(modules)

    def backward_tasks(self, losses: Mapping[str, Tensor], terms: dict[str, Tensor], engine: Engine,
                       extra: Tensor | None = None) -> Tensor:
        """Backpropagate the task losses (each Eq. 6 over its scales, unweighted) through ``tasks.weighting``, plus
        an unweighted ``extra`` term (UDA's adversarial loss); returns the total for logging and records
        ``<task>/weighted`` terms. Loss-level methods combine the losses; gradient-level methods combine the
        per-task gradients of the shared parameters (:meth:`_shared_and_specific`)."""
        losses = dict(sorted(losses.items()))
        self._step_losses = {name: loss.detach() for name, loss in losses.items()}
        if self.weighting.level == "loss":
            total = self.weighting.combine_losses(losses)
            weights = self.weighting.weights()
            engine.backward(total if extra is None else total + extra)
        else:
            if extra is not None:
                engine.backward(extra)
            shared, specific = self._shared_and_specific(losses)
            scaler = engine.scaler if engine.scaler.is_enabled() else None
            weights = weighted_backward(self.weighting, losses, shared, specific, scaler)
            total = torch.stack([weights[name] * loss.detach() for name, loss in losses.items()]).sum()
        terms.update({f"{name}/weighted": weights[name] * loss.detach() for name, loss in losses.items()})
        terms.update({f"weights/{name}": torch.as_tensor(weights[name], device=loss.device).detach()
                      for name, loss in losses.items()})
        total = total.detach() if extra is None else (total + extra).detach()
        terms["total"] = total
        return total

    def _shared_and_specific(self, losses: Mapping[str, Tensor]) -> tuple[dict[str, nn.Parameter],
                                                                        list[nn.Parameter]]:
        """The network's shared parameters by name (``<group>.<index>``): the encoder's and every other one that more
        than one task's loss reaches (with an exchange block, the decoder blocks that feed it); and the rest, each
        reached by one task (its head, its exchange modules, :meth:`extra_task_parameters`). Read once from the
        first step's autograd graph."""
        if self._split is None:
            reach = Counter(key for loss in losses.values() for key in reached_parameters(loss))
            shared, specific = {}, []
            for group, params in unwrap(self.model).param_groups().items():
                for i, p in enumerate(params):
                    if group == "backbone" or reach[id(p)] > 1:
                        shared[f"{group}.{i}"] = p
                    else:
                        specific.append(p)
            self._split = shared, specific + self.extra_task_parameters()
        return self._split

    def extra_task_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the network that the task losses train (SDE: the pose net); none by default."""
        return []

    def after_step(self, engine: Engine) -> None:
        """Called after every optimiser step: the weighting's history (DWA, FAMO) sees the global task losses."""
        if self._step_losses:
            self.weighting.after_step(rank_mean_losses(self._step_losses))

    def training_batches(self, dataset: Dataset, data: DataConfig, start_iteration: int,
                         seed_offset: int = 0) -> Iterator[Batch]:
        """Batches of this rank's share of the global batch ``data.batch_size``, in a seed-determined order."""
        dist = self.engine.dist
        return infinite_batches(
            dataset, local_batch_size(data.batch_size, dist.world_size), self.cfg.seed + seed_offset,
            start_iteration, collate, workers=loader_workers(data.workers), rank=dist.rank, world=dist.world_size,
            pin_memory=self.engine.device.type == "cuda",
        )

    def train_batches(self, start_iteration: int) -> Iterator[Any]:
        assert self.train_split is not None
        return self.training_batches(self.train_split, self.cfg.data, start_iteration)

    def selection(self) -> tuple[str, bool]:
        """``train.selection_metric`` checked against this run's metrics; ``delta`` without a full set of
        references falls back to the first task's main metric, said once."""
        key = self.cfg.train.selection_metric
        if key == "delta":
            if self.references.multitask and set(self.references.references()) == set(self.tasks):
                return key, True
            name, task = next(iter(self.tasks.items()))
            fallback = f"{name}/{task.main_metric}"
            why = ("no single-task references are recorded for this setting" if self.references.multitask
                   else "this run has no multi-task delta")
            if self.engine.is_main:
                print(f"note: train.selection_metric is 'delta' but {why}; best.pt is selected by {fallback}",
                      file=sys.stderr)
            return fallback, task.higher_is_better[task.main_metric]
        task_name, _, metric = key.partition("/")
        if task_name not in self.tasks or metric not in self.tasks[task_name].higher_is_better:
            valid = ", ".join(f"{t}/{m}" for t, obj in self.tasks.items() for m in obj.higher_is_better
                              if not m.startswith("iou_"))
            raise UserInputError(f"train.selection_metric {key!r} is not a metric of this run: use 'delta' or one "
                                 f"of {valid}")
        return key, self.tasks[task_name].higher_is_better[metric]

    # -------------------------------------------------------------------------------------- evaluation
    def validation_loader(self, dataset: Dataset | None = None) -> DataLoader:
        """This rank's share of the validation split, or of ``dataset`` (every sample exactly once over all ranks)."""
        dataset, dist = self.val_split if dataset is None else dataset, self.engine.dist
        assert dataset is not None, "built with with_data=False"
        if dist.enabled:
            dataset = Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
        data = self.cfg.data
        return DataLoader(dataset, batch_size=data.val_batch_size, shuffle=False,
                          num_workers=loader_workers(data.workers), worker_init_fn=own_process_group,
                          collate_fn=collate, generator=torch.Generator())

    def evaluate_tasks(self, engine: Engine) -> dict[str, dict[str, float]]:
        """Metrics of every task on the validation split (also kept with their details, e.g. confusion)."""
        metrics = evaluate(self.inference_model(), self.tasks, self.validation_loader(), engine.device,
                           engine.autocast)
        self.last_results = {name: metric.compute() for name, metric in metrics.items()}
        self.last_details = {name: metric.details() for name, metric in metrics.items()}
        return self.last_results

    def validate(self, engine: Engine) -> dict[str, float]:
        flat = flatten_metrics(self.evaluate_tasks(engine))
        delta = self.references.delta(self.last_results)
        if delta is not None:
            flat["delta"], flat["delta_se"] = delta
        return flat

    def panel_batch(self, key: str = "val", dataset: Callable[[], Dataset] | None = None) -> Batch:
        """The first PANEL_IMAGES samples of ``dataset()`` (default: the validation split) as one batch, read once
        under ``key`` with a fixed seed (augmented splits give the same pictures every time)."""
        if key not in self._panel_batches:
            dataset = self.val_split if dataset is None else dataset()
            assert dataset is not None, "built with with_data=False"
            with isolated_rng():
                torch.manual_seed(PANEL_SEED)
                self._panel_batches[key] = collate([dataset[i] for i in range(min(PANEL_IMAGES, len(dataset)))])
        return self._panel_batches[key]

    def image_panels(self, engine: Engine) -> dict[str, Tensor]:
        panel = prediction_panel(self.inference_model(), self.tasks, self.panel_batch(), engine.device,
                                 engine.autocast)
        return {"val/predictions": panel}

    def inference_model(self) -> nn.Module:
        """The network without multi-process wrappers (in whatever mode it is; evaluation sets eval())."""
        return unwrap(self.model)

    def metadata(self) -> dict[str, Any]:
        h, w = input_size(self.cfg.data, train=True)
        return {
            "scenario": self.cfg.scenario,
            "dataset": self.info.name,
            "class_names": list(self.info.class_names),
            "tasks": {name: {"code": t.code, "out_channels": t.out_channels} for name, t in self.tasks.items()},
            "input_size": [h, w],
        }

