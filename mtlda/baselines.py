"""Trivial baselines that every reported result is compared with.

* ``global``: one constant prediction for the whole split: the most frequent class, the mean valid depth, the
  mean normal direction, the mean edge rate of the training set.
* ``pixel prior``: the same statistics per pixel over the training set (most common class, mean depth and mean
  normal at each pixel). On street scenes this prior is strong (the road is at the bottom, the sky at the top),
  so a model must beat it clearly to have learnt anything from the image.

Both are computed from the training split without augmentation and evaluated with the tasks' own metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtlda.constants import IGNORE_INDEX
from mtlda.data.batch import collate
from mtlda.tasks import NormalsTask, SemsegTask, Task

PRIOR_KINDS = ("global", "pixel prior")


@torch.no_grad()
def fit_priors(dataset: Dataset, tasks: Mapping[str, Task], num_classes: int) -> dict[str, dict[str, Tensor]]:
    """kind -> task -> decoded prediction (1, C, H, W) at the training resolution."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, Tensor] = {}
    for batch in DataLoader(dataset, batch_size=16, collate_fn=collate):
        for name, task in tasks.items():
            target = task.target(batch)
            if isinstance(task, SemsegTask):
                valid = target != IGNORE_INDEX
                onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
                value, weight = onehot * valid[:, None], valid[:, None].float()
            else:
                weight = task.mask(batch).float()
                value = target.float() * weight
            sums[name] = sums.get(name, 0) + value.sum(0, keepdim=True)
            counts[name] = counts.get(name, 0) + weight.sum(0, keepdim=True)
    priors: dict[str, dict[str, Tensor]] = {kind: {} for kind in PRIOR_KINDS}
    for name, task in tasks.items():
        total, count = sums[name], counts[name]
        per_pixel = total / count.clamp(min=1)
        overall = (total.sum((2, 3), keepdim=True) / count.sum((2, 3), keepdim=True).clamp(min=1)).expand_as(total)
        per_pixel = torch.where(count > 0, per_pixel, overall)
        for kind, stat in (("global", overall), ("pixel prior", per_pixel)):
            priors[kind][name] = _as_prediction(task, stat, num_classes)
    return priors


def _as_prediction(task: Task, mean: Tensor, num_classes: int) -> Tensor:
    """A decoded prediction from a mean target: the majority class, the mean direction, or the mean value."""
    if isinstance(task, SemsegTask):
        return F.one_hot(mean.argmax(1), num_classes).permute(0, 3, 1, 2).float()
    if isinstance(task, NormalsTask):
        return F.normalize(mean, dim=1)
    return mean.contiguous()


@torch.no_grad()
def evaluate_priors(priors: Mapping[str, Mapping[str, Tensor]], tasks: Mapping[str, Task],
                    dataset: Dataset, batch_size: int = 16) -> dict[str, dict[str, dict[str, float]]]:
    """kind -> task -> metrics of each prior on ``dataset``."""
    out = {}
    for kind, per_task in priors.items():
        metrics = {name: task.new_metric() for name, task in tasks.items()}
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            for name, task in tasks.items():
                pred = per_task[name]
                size = tuple(task.target(batch).shape[-2:])
                if pred.shape[-2:] != torch.Size(size):
                    mode = "nearest" if isinstance(task, SemsegTask) else "bilinear"
                    pred = F.interpolate(pred, size=size, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
                metrics[name].update(pred.expand(batch.size, -1, -1, -1), batch)
        out[kind] = {name: m.compute() for name, m in metrics.items()}
    return out
