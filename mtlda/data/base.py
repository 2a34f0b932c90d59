"""The pipeline every loader shares: file-resolution sample -> resize -> augmentation -> normals -> Sample.

A loader subclasses :class:`DenseDataset` and implements three things: ``_list_items`` (the sample list, checked
when the data set is built, so a wrong root fails in the main process with a clear message, never inside a
DataLoader worker), ``_load`` (one sample at the files' resolution with ``K`` of that resolution and the targets
it was asked for) and ``_depth_file`` (the file surface normals are derived from, for data sets without
ground-truth normals).

Normals for data sets without ground truth come from ``<root>/normals_mtlda/...`` (``scripts/prepare_normals.py``)
when that file exists, else they are computed from the final (resized and augmented) depth and K with
:func:`mtlda.geometry.normals_from_depth`. Depth is read only when depth or computed normals need it.

Evaluation resolution: a validation loader is built with the validation size (``data.val_height/val_width``);
labels and depth are resized to it with nearest sampling. Evaluating at the labels' full resolution means setting
the validation size to the file size (e.g. 1024 x 2048 for Cityscapes).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlda.data.augment import AugmentConfig, random_augment, resize_sample
from mtlda.data.batch import Sample
from mtlda.data.io import DatasetError, read_json
from mtlda.data.labels import DEFAULT_CLASS_SET, ClassSet, class_set
from mtlda.data.normals_io import normals_path, read_normals
from mtlda.geometry import normals_from_depth, scale_intrinsics

log = logging.getLogger(__name__)

# Tasks a loader accepts; "disp" (self-supervised depth) needs no target.
KNOWN_TASKS = ("semseg", "depth", "normals", "edges", "disp")
INTRINSICS_FILE = "mtlda_intrinsics.json"


class DenseDataset(Dataset, ABC):
    """Base of the data set loaders; ``dataset[i]`` is a :class:`Sample` at ``size`` (h, w) (or the crop size)."""

    name: ClassVar[str]
    has_sequences: ClassVar[bool] = False
    has_normals_gt: ClassVar[bool] = False
    has_edges_gt: ClassVar[bool] = False

    def __init__(
        self,
        root: str | Path,
        split: str,
        tasks: Sequence[str],
        size: tuple[int, int],
        class_set_name: str = "",
        frames: Sequence[int] = (),
        augment: AugmentConfig | None = None,
        depth_cap: float = float("inf"),
    ) -> None:
        unknown = sorted(set(tasks) - set(KNOWN_TASKS))
        if unknown:
            raise ValueError(f"unknown task names {unknown}; loaders know {list(KNOWN_TASKS)}")
        if "edges" in tasks and not self.has_edges_gt:
            raise DatasetError(f"{self.name} has no edge labels; the edges task needs nyudv2")
        if frames and not self.has_sequences:
            raise DatasetError(f"{self.name} has no image sequences; data.frames must be empty for it")
        if 0 in frames:
            raise ValueError("data.frames lists neighbour offsets such as [-1, 1]; 0 (the frame itself) is implicit")
        if len(size) != 2 or min(size) < 3:
            raise ValueError(f"image size must be (height, width) of at least 3 pixels, got {size}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"{self.name} root {self.root} is not a folder; set data.root or the data set's "
                               "environment variable to the extracted data set")
        self.split = split
        self.tasks = frozenset(tasks)
        self.size = (int(size[0]), int(size[1]))
        self.classes: ClassSet = class_set(self.name, class_set_name or DEFAULT_CLASS_SET[self.name])
        self.frames = tuple(sorted(frames))
        self.augment = augment
        self.depth_cap = depth_cap
        self.items = self._list_items()
        if not self.items:
            raise DatasetError(f"{self.name} split {split!r} under {self.root} has no samples; check the split "
                               "name and run scripts/check_data.py")

    # ------------------------------------------------------------------ implemented by each loader
    @abstractmethod
    def _list_items(self) -> list[Any]:
        """The samples of ``self.split`` (any per-sample record), checked for the folders they need."""

    @abstractmethod
    def _load(self, index: int, with_depth: bool) -> Sample:
        """Sample ``index`` at file resolution: image, K, frames and the targets of ``self.tasks`` (normals only
        when the data set has ground truth), plus depth when ``with_depth``."""

    @abstractmethod
    def _depth_file(self, index: int) -> Path:
        """The file the normals of sample ``index`` are computed from (data sets without normals ground truth)."""

    # ------------------------------------------------------------------ pipeline
    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        derive_normals = "normals" in self.tasks and not self.has_normals_gt
        normals_file = normals_path(self.root, self._depth_file(index)) if derive_normals else None
        precomputed = normals_file is not None and normals_file.is_file()
        sample = self._load(index, with_depth="depth" in self.tasks or (derive_normals and not precomputed))
        if precomputed:
            sample = _with_precomputed_normals(sample, normals_file)
        sample = resize_sample(sample, *self.size)
        if self.augment is not None:
            sample = random_augment(sample, self.augment)
        if derive_normals and not precomputed:
            sample = _with_normals_from_depth(sample)
        if "depth" not in self.tasks:
            sample.targets.pop("depth", None)
            sample.masks.pop("depth", None)
        return sample

    # ------------------------------------------------------------------ helpers for subclasses
    def depth_target(self, depth: np.ndarray, valid: np.ndarray) -> tuple[Tensor, Tensor]:
        """(depth (1, H, W) float32 metres, 0 where invalid; mask (1, H, W) bool) with ``depth_cap`` applied."""
        mask = valid & np.isfinite(depth) & (depth > 0) & (depth <= self.depth_cap)
        depth = np.where(mask, depth, 0.0).astype(np.float32)
        return torch.from_numpy(depth)[None], torch.from_numpy(mask)[None]

    def semseg_target(self, native: np.ndarray) -> Tensor:
        """(H, W) int64 class indices of native label ids."""
        return torch.from_numpy(self.classes.map_native(native))


def image_tensor(rgb: np.ndarray) -> Tensor:
    """(3, H, W) float32 in [0, 1] of an (H, W, 3) uint8 RGB image."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)


def rescale_K(K: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """K (3, 3) of an image of ``from_size`` (h, w) as K of the same camera at ``to_size``."""
    if from_size == to_size:
        return K
    return scale_intrinsics(K[None], to_size[1] / from_size[1], to_size[0] / from_size[0])[0]


def fixed_intrinsics(root: Path, default: tuple[float, float, float, float, int, int]) -> tuple[
        Tensor, tuple[int, int]]:
    """(K (3, 3), (h, w) it belongs to) of a data set with one published calibration.

    ``default`` is (fx, fy, cx, cy, width, height). A copy of the data set rendered with another camera (toycity
    writes one) declares it in ``<root>/mtlda_intrinsics.json`` with the same keys, which then wins.
    """
    path = root / INTRINSICS_FILE
    if path.is_file():
        data = read_json(path, "intrinsics file")
        try:
            fx, fy, cx, cy = (float(data[k]) for k in ("fx", "fy", "cx", "cy"))
            width, height = int(data["width"]), int(data["height"])
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{path} needs numeric keys fx, fy, cx, cy, width, height ({err})") from err
    else:
        fx, fy, cx, cy, width, height = default
    return intrinsics_matrix(fx, fy, cx, cy), (height, width)


def check_same_size(what: str, path: Path, array: np.ndarray, image_hw: tuple[int, int]) -> None:
    if array.shape[:2] != image_hw:
        raise DatasetError(f"{what} {path} is {array.shape[1]}x{array.shape[0]} but its image is "
                           f"{image_hw[1]}x{image_hw[0]}; the files of one sample must share one resolution")


def _with_precomputed_normals(sample: Sample, path: Path) -> Sample:
    normals, valid = read_normals(path)
    check_same_size("precomputed normal map", path, normals, tuple(sample.image.shape[-2:]))
    sample.targets["normals"] = torch.from_numpy(normals).permute(2, 0, 1).contiguous()
    sample.masks["normals"] = torch.from_numpy(valid)[None]
    return sample


def _with_normals_from_depth(sample: Sample) -> Sample:
    normals, valid = normals_from_depth(sample.targets["depth"][None], sample.K[None], sample.masks["depth"][None])
    sample.targets["normals"] = normals[0]
    sample.masks["normals"] = valid[0]
    return sample


def drop_missing_neighbours(dataset: str, items: list, has_all: list[bool]) -> list:
    """Items whose neighbour frames all exist; logs how many were dropped."""
    kept = [item for item, ok in zip(items, has_all) if ok]
    if len(kept) < len(items):
        log.warning("%s: dropped %d of %d samples whose neighbour frames are missing", dataset,
                    len(items) - len(kept), len(items))
    return kept
