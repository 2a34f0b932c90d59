"""Pieces every dense scenario shares: supervised task losses (Eq. 6) and streaming evaluation."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlda.data.batch import Batch
from mtlda.losses.supervised import multiscale_objective
from mtlda.resize import resize_to
from mtlda.tasks import Task


def task_losses(preds: Mapping[tuple[str, int], Tensor], tasks: Mapping[str, Task],
                batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per task, the paper's Eq. 6 term (final scale + mean of intermediate scales), unweighted; and detached
    per (task, scale) terms for logging (``<task>/s<scale>``)."""
    losses = {(t, s): tasks[t].loss(pred.float(), batch) for (t, s), pred in preds.items() if t in tasks}
    _, per_task = multiscale_objective(losses, {t: 1.0 for t in tasks})
    terms = {f"{t}/s{s}": v.detach() for (t, s), v in losses.items()}
    return per_task, terms


@torch.no_grad()
def evaluate(model: nn.Module, tasks: Mapping[str, Task], loader: DataLoader, device: torch.device,
             autocast, scale: int = 0) -> dict[str, object]:
    """Streaming metrics of the scale-``scale`` (full-resolution) predictions at the targets' resolution, reduced
    over ranks: task -> metric object (``compute()`` for numbers, ``details()`` for extras)."""
    model.eval()
    metrics = {name: task.new_metric() for name, task in tasks.items()}
    for batch in loader:
        batch = batch.to(device)
        with autocast():
            preds = model(batch.image)
        for name, task in tasks.items():
            decoded = task.decode(resize_to(preds[(name, scale)].float(), task.target(batch).shape[-2:]))
            task.score(metrics[name], decoded, batch)
    for metric in metrics.values():
        metric.all_reduce()
    return metrics


def flatten_metrics(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {f"{task}/{key}": value for task, values in results.items() for key, value in values.items()
            if isinstance(value, (int, float))}
