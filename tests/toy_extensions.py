"""A toy fifth task and a toy exchange block, each added in this one module, as a user would add their own.

* ``elevation`` (code H): height above the road in metres, a per-pixel scalar map. Its target is derived from the
  data set's own files by a reader registered on the Cityscapes loader (the toycity scenes are written in that
  format): depth from the disparity map, back-projected with K, lifted into the road frame with the camera's pitch,
  roll and height from the camera JSON. Loss: masked L1; metric: mean absolute error over valid pixels.
* ``gate`` exchange block: each task's features plus a learnt sigmoid-gated sum of the other tasks' features.

Nothing else in mtlda is edited: the registries pick both up.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mtlda.data.batch import Batch
from mtlda.data.cityscapes import CityscapesDataset, read_camera, read_depth, sample_path
from mtlda.data.io import read_json
from mtlda.data.targets import SCALAR_MAP
from mtlda.geometry import backproject
from mtlda.metrics import StreamingMetric
from mtlda.models.blocks import register_block
from mtlda.resize import resize_to
from mtlda.tasks import Task, register_task
from mtlda.visualise import grey_to_rgb

ELEVATION_SCALE = 10.0  # metres shown as white in panels


def read_elevation(dataset: CityscapesDataset, index: int, sample) -> None:
    """Height above the road (1, H, W) metres of sample ``index`` at the files' resolution, and its validity."""
    city, stem = dataset.items[index]
    camera = sample_path(dataset.root, "camera", dataset.split, city, stem)
    K, baseline = read_camera(camera)
    extrinsic = read_json(camera, "Cityscapes camera file")["extrinsic"]
    depth, valid = read_depth(sample_path(dataset.root, "disparity", dataset.split, city, stem), float(K[0, 0]),
                              baseline)
    points = backproject(torch.from_numpy(depth)[None, None], K[None])[0]  # (3, H, W) camera frame
    pitch, roll = extrinsic["pitch"], extrinsic["roll"]
    up = torch.tensor([-math.sin(roll) * math.cos(pitch), -math.cos(roll) * math.cos(pitch), -math.sin(pitch)])
    elevation = extrinsic["z"] + (points * up.reshape(3, 1, 1)).sum(0, keepdim=True)
    mask = torch.from_numpy(valid)[None]
    sample.targets["elevation"] = torch.where(mask, elevation, 0.0).float()
    sample.masks["elevation"] = mask


class ElevationError(StreamingMetric):
    """Mean absolute error (m) over valid pixels of the split."""

    def _new_state(self) -> dict[str, Tensor]:
        return {"sum": torch.zeros((), dtype=torch.float64), "count": torch.zeros((), dtype=torch.float64)}

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        valid = mask.bool() if mask is not None else torch.ones_like(target, dtype=torch.bool)
        error = (resize_to(pred, target.shape[-2:]).double() - target.double()).abs()
        self._follow(pred.device)
        self._state["sum"] += error[valid].sum()
        self._state["count"] += valid.sum()

    def compute(self) -> dict[str, float]:
        count = self._state["count"].item()
        return {"mae": self._state["sum"].item() / count if count else float("nan")}

    def protocol_description(self) -> str:
        return "elevation: mean absolute error in metres over pixels with valid depth"


@register_task
class ElevationTask(Task):
    name = "elevation"
    code = "H"
    target_kind = SCALAR_MAP
    main_metric = "mae"
    columns = (("mae", "MAE m", False),)
    out_channels = 1

    def __init__(self) -> None:
        self.higher_is_better = {"mae": False}

    @classmethod
    def from_config(cls, cfg: Any, info: Any) -> "ElevationTask":
        return cls()

    def loss(self, pred_raw: Tensor, batch: Batch) -> Tensor:
        self.check_raw(pred_raw)
        target, mask = self.target(batch), self.mask(batch)
        error = (resize_to(pred_raw, target.shape[-2:]) - target).abs()
        return torch.where(mask, error, 0.0).sum() / mask.sum().clamp_min(1)

    def decode(self, pred_raw: Tensor) -> Tensor:
        return pred_raw

    def new_metric(self) -> ElevationError:
        return ElevationError()

    def visualise(self, decoded: Tensor) -> Tensor:
        return grey_to_rgb(decoded / ELEVATION_SCALE)

    def visualise_target(self, batch: Batch) -> Tensor:
        return grey_to_rgb(self.target(batch) * self.mask(batch) / ELEVATION_SCALE)

    def discriminator_input(self, pred_raw: Tensor, context: Any) -> Tensor:
        return pred_raw / ELEVATION_SCALE


CityscapesDataset.register_target_reader("elevation", read_elevation)


class GateBlock(nn.Module):
    """f_t + sigmoid(g_t) * sum of the other tasks' features, g_t a 1x1 conv of f_t: dict -> dict of one shape."""

    def __init__(self, tasks: tuple[str, ...], channels: int) -> None:
        super().__init__()
        self.tasks = tasks
        self.downscale = 1
        self.gates = nn.ModuleDict({task: nn.Conv2d(channels, channels, 1) for task in tasks})

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        total = sum(features[t] for t in self.tasks)
        return {t: features[t] + torch.sigmoid(self.gates[t](features[t])) * (total - features[t]) for t in self.tasks}


@register_block("gate")
def build_gate(tasks, channels: int, stage_stride: int, cfg) -> GateBlock:
    return GateBlock(tuple(tasks), channels)
