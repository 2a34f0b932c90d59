"""Build a data set from the ``data`` section of an experiment: real data sets and toycity alike.

Roots come from ``data.root`` or the data set's environment variable (``CITYSCAPES_DIR``, ``SYNTHIA_DIR``,
``VKITTI2_DIR``, ``NYUDV2_DIR``). ``dataset: toycity`` generates (once, cached) toycity scenes in the format
``data.toycity.format`` and reads them with that format's real loader and its "toycity" class set (or
``data.classes`` when set, e.g. 8 for the VKITTI2 <-> Cityscapes classes).

Training sets are resized to ``data.height`` x ``data.width`` and augmented; validation sets are resized to
``data.val_height`` x ``data.val_width`` (0: the training size; the file size evaluates at full label resolution)
and not augmented.
Neighbour frames (``data.frames``) are loaded for training sets only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from mtlda.data.augment import AugmentConfig
from mtlda.data.base import DenseDataset
from mtlda.data.cityscapes import CityscapesDataset
from mtlda.data.io import DatasetError
from mtlda.data.labels import DEFAULT_CLASS_SET, class_set
from mtlda.data.nyudv2 import NYUDv2Dataset
from mtlda.data.synthia import SynthiaDataset
from mtlda.data.toycity import MAX_DEPTH as TOYCITY_MAX_DEPTH
from mtlda.data.toycity_export import ensure_toycity
from mtlda.data.vkitti2 import VKITTI2Dataset
from mtlda.schema import DataConfig

LOADERS: dict[str, type[DenseDataset]] = {
    "cityscapes": CityscapesDataset,
    "synthia": SynthiaDataset,
    "vkitti2": VKITTI2Dataset,
    "nyudv2": NYUDv2Dataset,
}
ROOT_VARIABLES = {"cityscapes": "CITYSCAPES_DIR", "synthia": "SYNTHIA_DIR", "vkitti2": "VKITTI2_DIR",
                  "nyudv2": "NYUDV2_DIR"}
# Largest depth (metres) a loader keeps valid: stereo / rendering noise and sky lie beyond.
DEPTH_CAPS = {"cityscapes": 300.0, "synthia": 300.0, "vkitti2": 300.0, "nyudv2": 10.0}
DATASETS = ("toycity", *LOADERS)


@dataclass(frozen=True)
class DatasetInfo:
    """What models, losses and visualisers need to know about a data set configuration.

    ``palette`` (C, 3) uint8 RGB per class; ``depth_cap`` the largest valid depth in metres.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: np.ndarray
    has_sequences: bool
    has_normals_gt: bool
    depth_cap: float


def _check_dataset(cfg: DataConfig) -> str:
    """The on-disk format of ``cfg``: the data set itself, or toycity's format."""
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown data.dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    fmt = cfg.toycity.format if cfg.dataset == "toycity" else cfg.dataset
    if fmt not in LOADERS:
        raise ValueError(f"unknown data.toycity.format {fmt!r}; choose one of {', '.join(LOADERS)}")
    return fmt


def _class_set_name(cfg: DataConfig, fmt: str) -> str:
    if cfg.classes:
        return str(cfg.classes)
    return "toycity" if cfg.dataset == "toycity" else DEFAULT_CLASS_SET[fmt]


def data_root(cfg: DataConfig, with_sequences: bool = False) -> Path:
    """The folder a real data set is read from, or the generated toycity folder."""
    if cfg.dataset == "toycity":
        return ensure_toycity(cfg.toycity, with_sequences=with_sequences)
    variable = ROOT_VARIABLES[cfg.dataset]
    root = cfg.root or os.environ.get(variable, "")
    if not root:
        raise DatasetError(f"no folder for {cfg.dataset}: export {variable}=/path/to/{cfg.dataset} or set data.root "
                           f"(scripts/check_data.py --dataset {cfg.dataset} --root DIR checks a folder)")
    path = Path(root).expanduser()
    if not path.is_dir():
        source = "data.root" if cfg.root else variable
        raise DatasetError(f"{cfg.dataset} folder {path} (from {source}) does not exist; point {source} at the "
                           "extracted data set")
    return path


def build_dataset(cfg: DataConfig, split: str, train: bool, tasks: Sequence[str]) -> Dataset:
    """The data set of ``split`` for ``tasks`` (full task names), augmented when ``train``; see the module doc."""
    fmt = _check_dataset(cfg)
    frames = tuple(cfg.frames) if train else ()
    if frames and cfg.dataset == "toycity" and fmt != "cityscapes":
        raise DatasetError("toycity writes neighbour frames in the cityscapes format only; set "
                           "data.toycity.format=cityscapes for data.frames")
    size = (cfg.height, cfg.width) if train else (cfg.val_height or cfg.height, cfg.val_width or cfg.width)
    options: dict = {}
    if cfg.dataset == "toycity" and fmt in ("synthia", "vkitti2"):
        options["allow_missing"] = True
    if fmt == "vkitti2":
        options["variation"] = cfg.variation
    dataset = LOADERS[fmt](
        data_root(cfg, with_sequences=bool(frames)),
        split,
        tasks,
        size,
        class_set_name=_class_set_name(cfg, fmt),
        frames=frames,
        augment=AugmentConfig.from_data_config(cfg) if train else None,
        depth_cap=_depth_cap(cfg, fmt),
        **options,
    )
    return dataset


def _depth_cap(cfg: DataConfig, fmt: str) -> float:
    return float(TOYCITY_MAX_DEPTH) if cfg.dataset == "toycity" else DEPTH_CAPS[fmt]


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Classes, palette and capabilities of ``cfg``'s data set (no file is read)."""
    fmt = _check_dataset(cfg)
    classes = class_set(fmt, _class_set_name(cfg, fmt))
    loader = LOADERS[fmt]
    name = cfg.dataset
    if cfg.dataset == "toycity":
        name = f"toycity-{cfg.toycity.style}" + ("" if fmt == "cityscapes" else f"-{fmt}")
    return DatasetInfo(
        name=name,
        num_classes=classes.num_classes,
        class_names=classes.class_names,
        palette=classes.palette_array(),
        has_sequences=loader.has_sequences and (cfg.dataset != "toycity" or fmt == "cityscapes"),
        has_normals_gt=loader.has_normals_gt,
        depth_cap=_depth_cap(cfg, fmt),
    )
