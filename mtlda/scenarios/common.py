"""Pieces every scenario shares: tasks and network from a config, loaders, supervised losses, evaluation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from mtlda.constants import TASK_CODES
from mtlda.data.batch import Batch, collate
from mtlda.data.registry import DatasetInfo, build_dataset, dataset_info
from mtlda.data.sampling import infinite_batches
from mtlda.losses.supervised import multiscale_objective
from mtlda.models.decoder import HeadSpec
from mtlda.models.network import MultiTaskNet, build_network, format_parameter_counts
from mtlda.scenarios.engine import Engine
from mtlda.schema import DataConfig, ExperimentConfig
from mtlda.tasks import Task, build_tasks
from mtlda.visualise import make_panel


def task_names(codes: Sequence[str]) -> list[str]:
    """Sorted task names from codes such as ``["S", "D"]``; unknown codes are an error naming the valid ones."""
    unknown = [c for c in codes if c not in TASK_CODES]
    if unknown or not codes:
        raise ValueError(f"tasks.names: unknown task code(s) {unknown or codes}; use some of {list(TASK_CODES)}")
    return sorted(TASK_CODES[c] for c in codes)


def build_task_objects(cfg: ExperimentConfig, info: DatasetInfo) -> dict[str, Task]:
    return build_tasks(list(cfg.tasks.names), info.num_classes, info.palette, info.class_names, cfg.tasks)


def build_model(cfg: ExperimentConfig, tasks: Mapping[str, Task], device: torch.device,
                extra_heads: Mapping[str, HeadSpec] | None = None) -> MultiTaskNet:
    heads = {name: HeadSpec(task.out_channels, tuple(sorted(cfg.model.scales))) for name, task in tasks.items()}
    heads.update(extra_heads or {})
    model = build_network(cfg.model, heads).to(device)
    model.valid_input_size(*input_size(cfg.data, train=True))
    return model


def describe_model(model: MultiTaskNet) -> str:
    return format_parameter_counts(model.parameter_counts())


def input_size(data: DataConfig, train: bool) -> tuple[int, int]:
    """(H, W) of the network input for training (the crop, if any) or evaluation."""
    if train:
        return (data.crop[0], data.crop[1]) if data.crop else (data.height, data.width)
    return (data.val_height or data.height, data.val_width or data.width)


@dataclass
class DataSplits:
    info: DatasetInfo
    train: Dataset
    val: Dataset


def loader_tasks(tasks: Mapping[str, Task]) -> list[str]:
    """The targets a data set must provide to score ``tasks`` (e.g. ground-truth depth for ``disp``)."""
    return sorted({task.target_name for task in tasks.values()})


def build_splits(data: DataConfig, names: Sequence[str], train_split: bool = True) -> DataSplits:
    info = dataset_info(data)
    train = build_dataset(data, data.train_split, train=True, tasks=names) if train_split else None
    val = build_dataset(data, data.val_split, train=False, tasks=names)
    if data.max_val_samples and len(val) > data.max_val_samples:
        val = Subset(val, range(data.max_val_samples))
    return DataSplits(info, train, val)


def training_batches(engine: Engine, dataset: Dataset, data: DataConfig, start_iteration: int,
                     seed_offset: int = 0) -> Iterator[Batch]:
    return infinite_batches(
        dataset, data.batch_size, engine.cfg.seed + seed_offset, start_iteration, collate,
        workers=data.workers, rank=engine.dist.rank, world=engine.dist.world_size,
        pin_memory=engine.device.type == "cuda",
    )


def validation_loader(engine: Engine, dataset: Dataset, data: DataConfig) -> DataLoader:
    """This rank's share of the validation split (every sample exactly once over all ranks)."""
    if engine.dist.enabled:
        dataset = Subset(dataset, range(engine.dist.rank, len(dataset), engine.dist.world_size))
    return DataLoader(dataset, batch_size=data.val_batch_size, shuffle=False, num_workers=data.workers,
                      collate_fn=collate)


def supervised_loss(preds: Mapping[tuple[str, int], Tensor], tasks: Mapping[str, Task], batch: Batch,
                    weights: Mapping[str, float]) -> tuple[Tensor, dict[str, float]]:
    """Paper Eq. 6 over every supervised (task, scale); terms for logging are per task and per scale."""
    losses = {(t, s): tasks[t].loss(pred.float(), batch) for (t, s), pred in preds.items() if t in tasks}
    total, per_task = multiscale_objective(losses, {t: weights[t] for t in tasks})
    terms = {f"{t}/s{s}": v.item() for (t, s), v in losses.items()}
    terms.update({f"{t}/weighted": v.item() for t, v in per_task.items()})
    terms["total"] = total.item()
    return total, terms


def upsample_to(pred: Tensor, size: tuple[int, int]) -> Tensor:
    if pred.shape[-2:] == torch.Size(size):
        return pred
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def evaluate(engine: Engine, model: nn.Module, tasks: Mapping[str, Task], loader: DataLoader,
             scale: int = 0) -> dict[str, dict[str, float]]:
    """Streaming metrics of the scale-``scale`` predictions at the targets' resolution, reduced over ranks."""
    model.eval()
    metrics = {name: task.new_metric() for name, task in tasks.items()}
    for batch in loader:
        batch = batch.to(engine.device)
        with engine.autocast():
            preds = model(batch.image)
        for name, task in tasks.items():
            target_size = tuple(task.target(batch).shape[-2:])
            metrics[name].update(task.decode(upsample_to(preds[(name, scale)].float(), target_size)), batch)
    results = {}
    for name, metric in metrics.items():
        metric.all_reduce()
        results[name] = metric.compute()
    return results


def flatten_metrics(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {f"{task}/{key}": value for task, values in results.items() for key, value in values.items()
            if isinstance(value, (int, float))}


@torch.no_grad()
def prediction_panel(model: nn.Module, tasks: Mapping[str, Task], batch: Batch, engine: Engine,
                     max_images: int = 4) -> Tensor:
    """A (3, H', W') grid: input row, then per task a prediction row and a target row."""
    model.eval()
    batch = batch.to(engine.device)
    image = batch.image[:max_images]
    with engine.autocast():
        preds = model(image)
    rows = [image]
    for name, task in tasks.items():
        size = tuple(image.shape[-2:])
        rows.append(task.visualise(task.decode(upsample_to(preds[(name, 0)].float(), size))))
        rows.append(task.visualise_target(batch)[:max_images])
    return make_panel([r.float().cpu() for r in rows])
