"""Trivial baselines that every reported result is compared with.

* ``global``: one constant prediction for the whole split: the most frequent class, the mean valid depth, the
  mean normal direction, the mean edge rate of the training set.
* ``pixel prior``: the same statistics per pixel over the training set (most common class, mean depth and mean
  normal at each pixel). On street scenes this prior is strong (the road is at the bottom, the sky at the top),
  so a model must beat it clearly to have learnt anything from the image.

Both are computed from the training split without augmentation and evaluated with the tasks' own metrics; what a
"mean target" and its prediction are is each task's business (``Task.prior_terms``, ``Task.prior_prediction``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtlda.data.batch import collate
from mtlda.tasks import Task

PRIOR_KINDS = ("global", "pixel prior")
PRIOR_BATCH = 16


def _loader(dataset: Dataset) -> DataLoader:
    return DataLoader(dataset, batch_size=PRIOR_BATCH, collate_fn=collate, generator=torch.Generator())


@torch.no_grad()
def fit_priors(dataset: Dataset, tasks: Mapping[str, Task]) -> dict[str, dict[str, Tensor]]:
    """kind -> task -> decoded prediction (1, C, H, W) at the training resolution."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, Tensor] = {}
    for batch in _loader(dataset):
        for name, task in tasks.items():
            value, weight = task.prior_terms(batch)
            sums[name] = sums.get(name, 0) + value.sum(0, keepdim=True)
            counts[name] = counts.get(name, 0) + weight.sum(0, keepdim=True)
    priors: dict[str, dict[str, Tensor]] = {kind: {} for kind in PRIOR_KINDS}
    for name, task in tasks.items():
        total, count = sums[name], counts[name]
        per_pixel = total / count.clamp(min=1)
        overall = (total.sum((2, 3), keepdim=True) / count.sum((2, 3), keepdim=True).clamp(min=1)).expand_as(total)
        per_pixel = torch.where(count > 0, per_pixel, overall)
        for kind, stat in (("global", overall), ("pixel prior", per_pixel)):
            priors[kind][name] = task.prior_prediction(stat.contiguous())
    return priors


@torch.no_grad()
def evaluate_priors(priors: Mapping[str, Mapping[str, Tensor]], tasks: Mapping[str, Task],
                    dataset: Dataset) -> dict[str, dict[str, dict[str, float]]]:
    """kind -> task -> metrics of each prior on ``dataset``."""
    out = {}
    for kind, per_task in priors.items():
        metrics = {name: task.new_metric() for name, task in tasks.items()}
        for batch in _loader(dataset):
            for name, task in tasks.items():
                pred = task.resize_prior(per_task[name], tuple(task.target(batch).shape[-2:]))
                task.score(metrics[name], pred.expand(batch.size, -1, -1, -1), batch)
        out[kind] = {name: m.compute() for name, m in metrics.items()}
    return out
