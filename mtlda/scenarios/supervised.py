"""Supervised multi-task learning (the paper's section 4.2): every task supervised on one data set."""

from __future__ import annotations

from mtlda.data.batch import Batch
from mtlda.scenarios.dense import DenseScenario
from mtlda.scenarios.engine import Engine, StepOutput
from mtlda.scenarios.evaluation import task_losses
from mtlda.scenarios.registry import register_scenario


@register_scenario("supervised")
class SupervisedScenario(DenseScenario):
    """Every task supervised by its loss (Eq. 6 over its scales), balanced by ``tasks.weighting``."""

    def train_step(self, batch: Batch, engine: Engine) -> StepOutput:
        batch = batch.to(engine.device, non_blocking=True)
        self.model.train()
        with engine.autocast():
            preds = self.model(batch.image)
        losses, terms = task_losses(preds, self.tasks, batch)
        total = self.backward_tasks(losses, terms, engine)
        return StepOutput(terms, total)
