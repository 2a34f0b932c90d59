"""The image panels the scenarios log to TensorBoard: predictions next to targets for every scenario, plus what
each method works with: the source and target domains with the maps the discriminators see (UDA), and the warped
neighbour frames, the reprojection error and the auto-mask of the photometric loss (SDE)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlda.data.batch import Batch
from mtlda.losses.photometric import PhotometricLoss
from mtlda.panel_layout import labelled_panel, stack_panels
from mtlda.resize import resize_to
from mtlda.tasks import Task
from mtlda.visualise import apply_lut, colourise_error, colourise_mask

DISPARITY_TOP = 0.95
Predictions = Mapping[tuple[str, int], Tensor]
# (predictions, batch) -> (extra columns (B, 3, H, W), their titles)
ExtraColumns = Callable[[Predictions, Batch], tuple[list[Tensor], list[str]]]


def panel_columns(preds: Predictions, tasks: Mapping[str, Task], batch: Batch) -> tuple[list[Tensor], list[str]]:
    """Per task its prediction and target images (B, 3, H, W) with column titles."""
    columns, titles = [], []
    size = tuple(batch.image.shape[-2:])
    for name, task in tasks.items():
        pred, target = task.visualise_pair(task.decode(resize_to(preds[(name, 0)].float(), size)), batch)
        columns += [pred, target]
        titles += [f"{name} pred", f"{name} target"]
    return columns, titles


def class_legend_of(tasks: Mapping[str, Task]):
    """The first task legend (e.g. the segmentation classes) for the panels, or None."""
    return next((legend for legend in (t.legend() for t in tasks.values()) if legend is not None), None)


@torch.no_grad()
def prediction_panel(model: nn.Module, tasks: Mapping[str, Task], batch: Batch, device: torch.device,
                     autocast, extra: ExtraColumns | None = None) -> Tensor:
    """A (3, H', W') panel: per image a row with the input, then per task its prediction and its target, then the
    ``extra`` columns; titled columns and the class legend."""
    model.eval()
    batch = batch.to(device)
    with autocast():
        preds = model(batch.image)
    columns, titles = panel_columns(preds, tasks, batch)
    if extra is not None:
        more, more_titles = extra(preds, batch)
        columns, titles = columns + more, titles + more_titles
    return labelled_panel([c.float().cpu() for c in [batch.image, *columns]], ["input", *titles],
                          legend=class_legend_of(tasks))


def discriminator_columns(tasks: Mapping[str, Task], contexts: Mapping[str, Any], scale: int) -> ExtraColumns:
    """Extra columns: per task, the scale-``scale`` map its patch discriminator reads (entropy for segmentation,
    normalised depth, ...), at the input size; ``contexts`` from :meth:`Task.discriminator_context` of a source
    batch."""

    def columns(preds: Predictions, batch: Batch) -> tuple[list[Tensor], list[str]]:
        size = tuple(batch.image.shape[-2:])
        images = [task.visualise_discriminator_input(
            task.discriminator_input(resize_to(preds[(name, scale)].float(), size), contexts[name]))
            for name, task in tasks.items()]
        return images, [f"{name} D input s{scale}" for name in tasks]

    return columns


def adaptation_panel(model: nn.Module, tasks: Mapping[str, Task], domains: Sequence[tuple[str, Batch]],
                     device: torch.device, autocast, scale: int) -> Tensor:
    """(3, H', W') panels of each (heading, batch) domain stacked, the first being the labelled source: inputs,
    predictions, targets and the discriminator inputs at ``scale`` (normalised with the source batch's context)."""
    source = domains[0][1].to(device)
    contexts = {name: task.discriminator_context(source) for name, task in tasks.items()}
    extra = discriminator_columns(tasks, contexts, scale)
    return stack_panels([(heading, prediction_panel(model, tasks, batch, device, autocast, extra))
                         for heading, batch in domains])


@torch.no_grad()
def photometric_panel(disparity: Tensor, pose: Callable[[Tensor, Mapping[int, Tensor]], dict[int, Tensor]],
                      photometric: PhotometricLoss, batch: Batch) -> Tensor:
    """(3, H', W') panel of the photometric loss on ``batch`` (with neighbour frames): per image the target frame,
    each neighbour and its synthesis into the target view, the minimum reprojection error of the warped
    neighbours (black 0, white the image's 98th percentile), the auto-mask (white: the pixel is supervised) and the
    disparity (magma up to the image's 95th percentile, as Monodepth2 shows it). ``disparity``: (B, 1, h, w) the network's scale-0 disparity of ``batch.image``; ``pose``:
    (target, frames) -> offset -> T_tgt_to_src."""
    poses = pose(batch.image, batch.frames)
    maps = photometric.reprojection_maps(disparity, batch.image, batch.frames, poses, batch.K)
    columns, titles = [batch.image], ["target frame"]
    for offset, warped in maps.warped.items():
        columns += [batch.frames[offset], warped]
        titles += [f"frame {offset:+d}", f"{offset:+d} warped"]
    disparity = resize_to(disparity.float(), tuple(batch.image.shape[-2:]))
    top = disparity.flatten(1).quantile(DISPARITY_TOP, dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    columns += [colourise_error(maps.error), colourise_mask(maps.supervised), apply_lut(disparity / top)]
    titles += ["reprojection error", "auto-mask", "disparity"]
    return labelled_panel([c.float().cpu() for c in columns], titles)
