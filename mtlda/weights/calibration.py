"""Choosing the fusion order of an official S-D-N file on real images.

The order in which the official ``post`` convs were trained to concatenate their inputs is not in the file (B1).
Each candidate order gives a different model; the right one is the one whose predictions score best on labelled
images. :func:`fusion_order_scores` evaluates every candidate on the same batches with the tasks' own metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlda.data.batch import Batch
from mtlda.metrics import StreamingMetric
from mtlda.tasks import Task
from mtlda.weights.densemtl import densemtl_to_mtlda, fusion_orders


def fusion_order_candidates(state: Mapping[str, Tensor], tasks: Sequence[str],
                            target: Mapping[str, Tensor] | None = None,
                            dataset: str = "cityscapes") -> dict[str, dict[str, Tensor]]:
    """Fusion order name -> converted state dict, for every order of :func:`fusion_orders` (tensors shared);
    ``dataset``: the file's training data set (its normals convention)."""
    return {name: densemtl_to_mtlda(state, tasks, name, target=target, dataset=dataset)
            for name in fusion_orders(tasks)}


def _add_batch(task: Task, metric: StreamingMetric, raw: Tensor, batch: Batch) -> None:
    """Score one batch of raw outputs (B, C, h, w): upsampled to the target, decoded, added to ``metric``."""
    size = tuple(task.target(batch).shape[-2:])
    decoded = task.decode(F.interpolate(raw.float(), size=size, mode="bilinear", align_corners=False))
    task.score(metric, decoded, batch)


@torch.no_grad()
def main_metrics(model: nn.Module, batches: Sequence[Batch], tasks: Mapping[str, Task],
                 scale: int = 0) -> dict[str, float]:
    """Task name -> its main metric of ``model``'s scale-``scale`` predictions over ``batches``."""
    model.eval()
    device = next(model.parameters()).device
    metrics = {name: task.new_metric() for name, task in tasks.items()}
    for batch in batches:
        batch = batch.to(device)
        predictions = model(batch.image)
        for name, task in tasks.items():
            _add_batch(task, metrics[name], predictions[(name, scale)], batch)
    return {name: float(metrics[name].compute()[task.main_metric]) for name, task in tasks.items()}


def fusion_order_scores(
    build_model: Callable[[], nn.Module],
    candidates: Mapping[str, Mapping[str, Tensor]],
    batches: Sequence[Batch],
    tasks: Mapping[str, Task],
    scale: int = 0,
) -> dict[str, float]:
    """Candidate name -> score (higher is better) of each converted state dict on ``batches``.

    ``build_model`` returns a fresh model of the experiment; each candidate is loaded strictly. The score is the mean
    over tasks of the candidate's main metric relative to the candidates' mean, signed so that better is larger:
    sum_t +-(m_t(c) - mean_c m_t) / mean_c |m_t| / T. One candidate scores 0.
    """
    model = build_model()
    measured = {}
    for name, state in candidates.items():
        model.load_state_dict(state, strict=True)
        measured[name] = main_metrics(model, batches, tasks, scale)
    scores = dict.fromkeys(measured, 0.0)
    for task_name, task in tasks.items():
        values = {name: metrics[task_name] for name, metrics in measured.items()}
        mean = sum(values.values()) / len(values)
        spread = sum(abs(v) for v in values.values()) / len(values) or 1.0
        sign = 1.0 if task.higher_is_better[task.main_metric] else -1.0
        for name, value in values.items():
            scores[name] += sign * (value - mean) / spread / len(tasks)
    return scores
