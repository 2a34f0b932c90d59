"""Supervised multi-task learning (the paper's section 4.2): every task supervised on one data set."""

from __future__ import annotations

import torch

from mtlda.data.batch import Batch
from mtlda.scenarios.dense import DenseScenario
from mtlda.scenarios.engine import Engine, StepOutput
from mtlda.scenarios.evaluation import task_losses
from mtlda.scenarios.registry import register_scenario


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, float],
                   terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_t w_t L_t, recording ``<task>/weighted`` terms."""
    weighted = {name: weights[name] * loss for name, loss in losses.items()}
    terms.update({f"{name}/weighted": value.detach() for name, value in weighted.items()})
    return torch.stack(list(weighted.values())).sum()


@register_scenario("supervised")
class SupervisedScenario(DenseScenario):
    """Every task supervised by its loss (Eq. 6 over its scales), combined with the task weights."""

    def train_step(self, batch: Batch, engine: Engine) -> StepOutput:
        batch = batch.to(engine.device, non_blocking=True)
        self.model.train()
        with engine.autocast():
            preds = self.model(batch.image)
        losses, terms = task_losses(preds, self.tasks, batch)
        total = weighted_total(losses, self.weights, terms)
        engine.backward(total)
        terms["total"] = total.detach()
        return StepOutput(terms, terms["total"])
