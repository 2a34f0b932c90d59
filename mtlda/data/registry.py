"""Build a data set from the ``data`` section of an experiment: real data sets and toycity alike.

Data sets are looked up in the registry (:mod:`mtlda.data.catalog`). Roots come from ``data.root`` or the data
set's environment variable (its loader's ``root_variable``: ``CITYSCAPES_DIR``, ``SYNTHIA_DIR``, ``VKITTI2_DIR``,
``NYUDV2_DIR``). ``dataset: toycity`` generates (once, cached) toycity scenes in the format
``data.toycity.format`` and reads them with that format's real loader and its "toycity" class set (or
``data.classes`` when set, e.g. 8 for the VKITTI2 <-> Cityscapes classes).

Training sets are resized to ``data.height`` x ``data.width`` and augmented; validation sets are resized to
``data.val_height`` x ``data.val_width`` (0: the training size; the file size evaluates at full label resolution)
and not augmented.
Neighbour frames (``data.frames``) are loaded for training sets only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from mtlda.data.augment import AugmentConfig
from mtlda.data.base import DenseDataset
from mtlda.data.catalog import TOYCITY, dataset_class, dataset_names
from mtlda.data.io import DatasetError
from mtlda.data.normals_io import NORMALS_DIR
from mtlda.data.toycity import MAX_DEPTH as TOYCITY_MAX_DEPTH
from mtlda.data.toycity_export import FORMATS as TOYCITY_FORMATS
from mtlda.data.toycity_export import SEQUENCE_FORMATS, ensure_toycity, toycity_domain, toycity_name
from mtlda.schema import DataConfig

# Names accepted by data.dataset when this module was imported (kept for callers of the former constant; a command
# line built later reads dataset_names(toycity=True), which includes data sets registered since).
DATASETS = dataset_names(toycity=True)


@dataclass(frozen=True)
class DatasetInfo:
    """What models, losses and visualisers need to know about a data set configuration.

    ``palette`` (C, 3) uint8 RGB per class; ``depth_cap`` the largest valid depth in metres.
    """

    name: str
    domain: str  # the name without the scene selection (toycity's seed and validation count)
    num_classes: int
    class_names: tuple[str, ...]
    palette: np.ndarray
    has_sequences: bool
    has_normals_gt: bool
    depth_cap: float


def _loader(cfg: DataConfig) -> type[DenseDataset]:
    """The loader class of ``cfg``'s on-disk format: the data set itself, or toycity's format."""
    if cfg.dataset != TOYCITY and cfg.dataset not in dataset_names():
        raise ValueError(f"unknown data.dataset {cfg.dataset!r}; choose one of "
                         f"{', '.join(dataset_names(toycity=True))}")
    if cfg.dataset == TOYCITY and cfg.toycity.format not in TOYCITY_FORMATS:
        raise ValueError(f"unknown data.toycity.format {cfg.toycity.format!r}; choose one of "
                         f"{', '.join(TOYCITY_FORMATS)}")
    return dataset_class(cfg.toycity.format if cfg.dataset == TOYCITY else cfg.dataset)


def _class_set_name(cfg: DataConfig, loader: type[DenseDataset]) -> str:
    if cfg.classes:
        return str(cfg.classes)
    return "toycity" if cfg.dataset == TOYCITY else loader.default_class_set


def _depth_cap(cfg: DataConfig, loader: type[DenseDataset]) -> float:
    return float(TOYCITY_MAX_DEPTH) if cfg.dataset == TOYCITY else loader.max_depth


def data_root(cfg: DataConfig, with_sequences: bool = False) -> Path:
    """The folder a real data set is read from, or the generated toycity folder."""
    if cfg.dataset == TOYCITY:
        return ensure_toycity(cfg.toycity, with_sequences=with_sequences)
    loader = dataset_class(cfg.dataset)
    path = Path(cfg.root).expanduser() if cfg.root else loader.root_from_environment()
    if not path.is_dir():
        source = "data.root" if cfg.root else loader.root_variable
        raise DatasetError(f"{cfg.dataset} folder {path} (from {source}) does not exist; point {source} at the "
                           f"extracted data set (scripts/check_data.py --dataset {cfg.dataset} --root DIR checks a "
                           "folder)")
    return path


def _normals_root(cfg: DataConfig) -> Path | None:
    """``data.normals_root`` (the folder prepare-normals --out wrote normals_mtlda/ into), None for the data set
    root; DatasetError when it is set but holds no normals_mtlda folder."""
    if not cfg.normals_root:
        return None
    path = Path(cfg.normals_root).expanduser()
    if not (path / NORMALS_DIR).is_dir():
        raise DatasetError(f"data.normals_root {path} has no {NORMALS_DIR}/ folder; write it with "
                           f"scripts/prepare_normals.py --dataset {cfg.dataset} --out {path}, or unset data.normals_root")
    return path


def build_dataset(cfg: DataConfig, split: str, train: bool, tasks: Sequence[str]) -> Dataset:
    """The data set of ``split`` for ``tasks`` (full task names), augmented when ``train``; see the module doc."""
    loader = _loader(cfg)
    frames = tuple(cfg.frames) if train else ()
    if frames and cfg.dataset == TOYCITY and loader.name not in SEQUENCE_FORMATS:
        raise DatasetError("toycity writes neighbour frames in the cityscapes format only; set "
                           "data.toycity.format=cityscapes for data.frames")
    size = (cfg.height, cfg.width) if train else (cfg.val_height or cfg.height, cfg.val_width or cfg.width)
    return loader(
        data_root(cfg, with_sequences=bool(frames)),
        split,
        tasks,
        size,
        class_set_name=_class_set_name(cfg, loader),
        frames=frames,
        augment=AugmentConfig.from_data_config(cfg) if train else None,
        depth_cap=_depth_cap(cfg, loader),
        allow_missing=cfg.dataset == TOYCITY,
        normals_root=_normals_root(cfg),
        **{key: getattr(cfg, key) for key in loader.config_options},
    )


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Classes, palette and capabilities of ``cfg``'s data set (no file is read)."""
    loader = _loader(cfg)
    classes = loader.class_set(_class_set_name(cfg, loader))
    toycity = cfg.dataset == TOYCITY
    return DatasetInfo(
        name=toycity_name(cfg.toycity) if toycity else cfg.dataset,
        domain=toycity_domain(cfg.toycity) if toycity else cfg.dataset,
        num_classes=classes.num_classes,
        class_names=classes.class_names,
        palette=classes.palette_array(),
        has_sequences=loader.has_sequences and (not toycity or loader.name in SEQUENCE_FORMATS),
        has_normals_gt=loader.has_normals_gt,
        depth_cap=_depth_cap(cfg, loader),
    )
