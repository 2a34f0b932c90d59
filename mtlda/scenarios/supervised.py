"""Supervised multi-task learning (the paper's section 4.2): every task supervised on one data set."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mtlda.data.batch import Batch, collate
from mtlda.scenarios.common import (
    build_model,
    build_splits,
    build_task_objects,
    evaluate,
    flatten_metrics,
    prediction_panel,
    supervised_loss,
    task_names,
    training_batches,
    validation_loader,
)
from mtlda.scenarios.engine import Engine, OptimizerSpec, Scenario, StepOutput, unwrap
from mtlda.scenarios.references import ReferenceBook
from mtlda.schema import ExperimentConfig
from mtlda.tasks import task_weights


class SupervisedScenario(Scenario):
    def __init__(self, cfg: ExperimentConfig, engine: Engine, train: bool = True) -> None:
        self.cfg, self.engine = cfg, engine
        self.names = task_names(cfg.tasks.names)
        self.splits = build_splits(cfg.data, self.names, train_split=train)
        self.tasks = build_task_objects(cfg, self.splits.info)
        self.weights = task_weights(cfg.tasks)
        self.model = build_model(cfg, self.tasks, engine.device)
        if engine.dist.enabled and cfg.model.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.references = ReferenceBook(cfg, self.splits.info, self.tasks)
        self._panel_batch: Batch | None = None
        self.last_results: dict[str, dict[str, float]] = {}

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"model": OptimizerSpec(unwrap(self.model).param_groups(), self.cfg.optim)}

    def wrap_for_distributed(self, engine: Engine) -> None:
        ids = [engine.device.index] if engine.device.type == "cuda" else None
        self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def train_batches(self, start_iteration: int) -> Iterator[Batch]:
        return training_batches(self.engine, self.splits.train, self.cfg.data, start_iteration)

    def train_step(self, batch: Batch, engine: Engine) -> StepOutput:
        batch = batch.to(engine.device, non_blocking=True)
        self.model.train()
        with engine.autocast():
            preds = self.model(batch.image)
        total, terms = supervised_loss(preds, self.tasks, batch, self.weights)
        engine.backward(total)
        return StepOutput(terms, terms["total"])

    def evaluate_tasks(self, engine: Engine) -> dict[str, dict[str, float]]:
        loader = validation_loader(engine, self.splits.val, self.cfg.data)
        return evaluate(engine, self.model, self.tasks, loader)

    def validate(self, engine: Engine) -> dict[str, float]:
        results = self.evaluate_tasks(engine)
        self.last_results = results
        flat = flatten_metrics(results)
        delta = self.references.delta(results)
        if delta is not None:
            flat["delta"] = delta
        return flat

    def higher_is_better(self, metric: str) -> bool:
        if metric == "delta":
            return True
        task, _, name = metric.partition("/")
        if task not in self.tasks or name not in self.tasks[task].higher_is_better:
            raise ValueError(
                f"train.selection_metric {metric!r} is not a metric of this run: use 'delta' or one of "
                + ", ".join(f"{t}/{m}" for t, task_obj in self.tasks.items() for m in task_obj.higher_is_better)
            )
        return self.tasks[task].higher_is_better[name]

    def image_panels(self, engine: Engine) -> dict[str, torch.Tensor]:
        if self._panel_batch is None:
            self._panel_batch = collate([self.splits.val[i] for i in range(min(4, len(self.splits.val)))])
        return {"val/predictions": prediction_panel(self.model, self.tasks, self._panel_batch, engine)}
