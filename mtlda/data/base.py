"""The pipeline every loader shares: file-resolution sample -> (derived normals) -> resize -> augmentation -> Sample.

A loader subclasses :class:`DenseDataset`, declares what its data set is as class attributes (name, root variable,
depth cap, the archive of each folder, class sets, official counts, the targets its files hold), registers itself
with :func:`mtlda.data.catalog.register_dataset` and implements:

* ``_list_items`` (the sample list, checked when the data set is built, so a wrong root fails in the main process
  with a clear message, never inside a DataLoader worker);
* ``_load`` (one sample at the files' resolution with ``K`` of that resolution and the targets it was asked for);
* ``_depth_file`` (the file surface normals are derived from, for data sets without ground-truth normals);
* the class methods ``depth_files`` / ``depth_for_normals`` (``scripts/prepare_normals.py``) and ``check``
  (``scripts/check_data.py``, with the helpers of :mod:`mtlda.data.checks`).

Label maps are checked against the data set's label table (a value outside it is a :class:`DatasetError` naming
the file and the values); every file of a sample must have the image's size.

Further targets: a task whose target is registered in :mod:`mtlda.data.targets` is read by a *target reader*
registered per loader class, ``CityscapesDataset.register_target_reader("height", reader)``; ``reader(dataset,
index, sample)`` sets ``sample.targets[name]`` and ``sample.masks[name]`` at the files' resolution, before resize
and augmentation, which then treat the target by its kind.

Normals for data sets without ground truth come from ``<normals_root>/normals_mtlda/...``
(``scripts/prepare_normals.py``; ``normals_root`` defaults to the data set root) when that file exists, else they
are computed with :func:`mtlda.geometry.normals_from_depth` from the depth and K at the files' resolution (as
``prepare_normals`` does) whenever resize or zoom resamples the sample, then resized and augmented as normals: depth
resampled with nearest sampling no longer lies where the rescaled K puts it (a 1.3x zoom gave normals ~15 degrees
off a rendered plane). Without resampling (flips and crops only) they are computed from the final depth and K.
Depth is read only when depth or computed normals need it.

Evaluation resolution: a validation loader is built with the validation size (``data.val_height/val_width``);
labels and depth are resized to it with nearest sampling. Evaluating at the labels' full resolution means setting
the validation size to the file size (e.g. 1024 x 2048 for Cityscapes).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlda.data.augment import AugmentConfig, random_augment, resize_sample
from mtlda.data.batch import Sample
from mtlda.data.catalog import dataset_class, dataset_names
from mtlda.data.io import DatasetError, read_json
from mtlda.data.labels import ClassSet, unknown_label_values
from mtlda.data.normals_io import normals_path, read_normals
from mtlda.data.targets import describe_target, target_kind, target_names
from mtlda.geometry import normals_from_depth, scale_intrinsics

if TYPE_CHECKING:
    from mtlda.data.checks import CheckSettings, Report

log = logging.getLogger(__name__)

# Tasks that need no target from the files ("disp": self-supervised depth learns from neighbour frames).
TARGETLESS_TASKS = ("disp",)
INTRINSICS_FILE = "mtlda_intrinsics.json"
TOYCITY_METADATA_FILE = "toycity.json"  # written by toycity into every folder it generates

TargetReader = Callable[["DenseDataset", int, Sample], None]


def known_tasks() -> tuple[str, ...]:
    """Task names a loader accepts: every registered target (:mod:`mtlda.data.targets`) and "disp"."""
    return (*target_names(), *TARGETLESS_TASKS)


class DenseDataset(Dataset, ABC):
    """Base of the data set loaders; ``dataset[i]`` is a :class:`Sample` at ``size`` (h, w) (or the crop size).

    ``depth_cap`` (metres) masks out farther depth (:func:`mtlda.data.registry.build_dataset` passes the data
    set's ``max_depth``). ``normals_root`` is the folder holding ``normals_mtlda`` (None: ``root``).
    ``allow_missing`` keeps the samples of a fixed split file that exist instead of failing when some are missing
    (toycity copies hold a few of the listed ones); loaders whose splits are what is on disk ignore it.
    """

    name: ClassVar[str]  # registry name, e.g. "cityscapes"
    title: ClassVar[str]  # name in messages, e.g. "Cityscapes"
    root_variable: ClassVar[str]  # environment variable naming the root, e.g. "CITYSCAPES_DIR"
    max_depth: ClassVar[float]  # default depth cap (metres): stereo / rendering noise and sky lie beyond
    download_site: ClassVar[str]
    sources: ClassVar[dict[str, str]]  # folder kind -> the archive of download_site that provides it
    depth_kind: ClassVar[str]  # the sources key of the depth files
    label_kind: ClassVar[str]  # the sources key of the label maps
    label_values: ClassVar[frozenset[int] | None] = None  # values label files may hold (None: not id maps)
    class_sets: ClassVar[dict[str, ClassSet]]
    default_class_set: ClassVar[str]
    official_counts: ClassVar[dict[str, int]] = {}  # samples per split (or scene) of the official release
    builtin_targets: ClassVar[frozenset[str]] = frozenset({"semseg", "depth", "normals"})  # read by ``_load``
    config_options: ClassVar[dict[str, str]] = {}  # further constructor options set from data.<key>: help text
    has_sequences: ClassVar[bool] = False
    has_normals_gt: ClassVar[bool] = False
    _target_readers: ClassVar[dict[str, TargetReader]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._target_readers = {}

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
        normals_root: str | Path | None = None,
        allow_missing: bool = False,
    ) -> None:
        self._check_tasks(tasks)
        if frames and not self.has_sequences:
            raise DatasetError(f"{self.name} has no image sequences; data.frames must be empty for it")
        if 0 in frames:
            raise ValueError("data.frames lists neighbour offsets such as [-1, 1]; 0 (the frame itself) is implicit")
        if len(size) != 2 or min(size) < 3:
            raise ValueError(f"image size must be (height, width) of at least 3 pixels, got {size}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"{self.name} root {self.root} is not a folder; set data.root or {self.root_variable} "
                               "to the extracted data set")
        self.normals_root = Path(normals_root).expanduser() if normals_root else self.root
        self.split = split
        self.tasks = frozenset(tasks)
        self.size = (int(size[0]), int(size[1]))
        self.classes: ClassSet = self.class_set(class_set_name or self.default_class_set)
        self.frames = tuple(sorted(frames))
        self.augment = augment
        self.depth_cap = depth_cap
        self.allow_missing = allow_missing
        self.items = self._list_items()
        if not self.items:
            raise DatasetError(f"{self.name} split {split!r} under {self.root} has no samples; check the split "
                               "name and run scripts/check_data.py")

    # ------------------------------------------------------------------ what the data set is
    @classmethod
    def class_set(cls, name: str) -> ClassSet:
        """The class set ``name`` ("19", "8", "toycity", ...); ValueError listing the choices."""
        if name not in cls.class_sets:
            raise ValueError(f"{cls.name} has no {name}-class set; choose data.classes from {sorted(cls.class_sets)} "
                             f"(0: the default {cls.default_class_set})")
        return cls.class_sets[name]

    @classmethod
    def download_hint(cls, kind: str, root: Path | None = None) -> str:
        """Where the folder ``kind`` (a ``sources`` key) comes from, e.g. "download gtFine_trainvaltest.zip from
        https://www.cityscapes-dataset.com/downloads/ and extract it into <root>"."""
        folder = root or "the data set folder"
        return f"download {cls.sources[kind]} from {cls.download_site} and extract it into {folder}"

    @classmethod
    def root_from_environment(cls) -> Path:
        """The root named by ``root_variable``; DatasetError when the variable is unset or empty."""
        value = os.environ.get(cls.root_variable, "")
        if not value:
            raise DatasetError(f"no folder for {cls.name}: export {cls.root_variable}=/path/to/{cls.name} or name the "
                               "folder (data.root, --root)")
        return Path(value).expanduser()

    @classmethod
    def depth_files(cls, root: Path) -> list[Path]:
        """Every depth file of every split under ``root`` (the sources of precomputed normals)."""
        raise DatasetError(f"{cls.name} ships ground-truth normals; there are no depth files to derive them from")

    @classmethod
    def depth_for_normals(cls, root: Path, path: Path) -> tuple[np.ndarray, np.ndarray, Tensor]:
        """(depth (H, W) metres, valid (H, W) bool, K (3, 3)) at the resolution of a file of :meth:`depth_files`."""
        raise DatasetError(f"{cls.name} ships ground-truth normals; there are no depth files to derive them from")

    @classmethod
    @abstractmethod
    def check(cls, root: Path, report: Report, settings: CheckSettings) -> None:
        """Check the folder ``root``: notes and problems go to ``report`` (see :mod:`mtlda.data.checks`)."""

    # ------------------------------------------------------------------ further targets
    @classmethod
    def register_target_reader(cls, task: str, reader: TargetReader) -> None:
        """Read target ``task`` (registered in :mod:`mtlda.data.targets`) for this loader and its subclasses with
        ``reader(dataset, index, sample)``, which sets ``sample.targets[task]`` and ``sample.masks[task]`` (1, H, W)
        bool at the image's (file) resolution."""
        target_kind(task)
        if task in cls.builtin_targets:
            raise ValueError(f"{cls.name} reads {task} targets itself; a reader is for targets it does not read")
        if cls._target_readers.get(task, reader) is not reader:
            raise ValueError(f"{cls.__name__} already has a reader for target {task!r}")
        cls._target_readers[task] = reader

    @classmethod
    def target_reader(cls, task: str) -> TargetReader | None:
        """The reader registered for ``task`` on this class or a base class, or None."""
        for klass in cls.__mro__:
            reader = vars(klass).get("_target_readers", {}).get(task)
            if reader is not None:
                return reader
        return None

    @classmethod
    def provides(cls, task: str) -> bool:
        """Whether the loader yields the target of ``task`` (its own files or a registered reader)."""
        return task in TARGETLESS_TASKS or task in cls.builtin_targets or cls.target_reader(task) is not None

    def _check_tasks(self, tasks: Sequence[str]) -> None:
        unknown = sorted(set(tasks) - set(known_tasks()))
        if unknown:
            raise ValueError(f"unknown task names {unknown}; loaders know {list(known_tasks())}")
        for task in sorted(set(tasks)):
            if not self.provides(task):
                others = [n for n in dataset_names() if dataset_class(n).provides(task)]
                where = f"data sets with them: {', '.join(others)}; or " if others else ""
                raise DatasetError(f"{self.name} has no {describe_target(task)}; {where}register a reader with "
                                   f"{type(self).__name__}.register_target_reader({task!r}, reader)")

    # ------------------------------------------------------------------ implemented by each loader
    @abstractmethod
    def _list_items(self) -> list[Any]:
        """The samples of ``self.split`` (any per-sample record), checked for the folders they need."""

    @abstractmethod
    def _load(self, index: int, with_depth: bool) -> Sample:
        """Sample ``index`` at file resolution: image, K, frames and the built-in targets of ``self.tasks`` (normals
        only when the data set has ground truth), plus depth when ``with_depth``."""

    @abstractmethod
    def _depth_file(self, index: int) -> Path:
        """The file the normals of sample ``index`` are computed from (data sets without normals ground truth)."""

    # ------------------------------------------------------------------ pipeline
    def __len__(self) -> int:
        return len(self.items)

    def read_files(self, index: int) -> Sample:
        """Sample ``index`` at its files' resolution, every file it needs decoded and checked: image, K, frames,
        the targets of ``self.tasks`` (normals: ground truth or a precomputed file), depth when depth is asked for or
        normals must be derived from it, and the targets of registered readers."""
        normals_file = self._precomputed_normals_file(index)
        derive_normals = "normals" in self.tasks and not self.has_normals_gt and normals_file is None
        sample = self._load(index, with_depth="depth" in self.tasks or derive_normals)
        if normals_file is not None:
            sample = _with_precomputed_normals(sample, normals_file)
        for task in sorted(self.tasks - self.builtin_targets - set(TARGETLESS_TASKS)):
            reader = self.target_reader(task)
            if reader is None:
                raise DatasetError(f"no {task!r} target reader is registered on {type(self).__name__} in this process;"
                                   " register it when the module that defines it is imported (DataLoader workers "
                                   "started with 'spawn' import only what they unpickle)")
            reader(self, index, sample)
            _check_reader_output(self, task, sample)
        return sample

    def __getitem__(self, index: int) -> Sample:
        sample = self.read_files(index)
        derive_normals = "normals" in self.tasks and "normals" not in sample.targets
        if derive_normals and self._resamples(sample):
            sample = _with_normals_from_depth(sample)
        sample = resize_sample(sample, *self.size)
        if self.augment is not None:
            sample = random_augment(sample, self.augment)
        if derive_normals and "normals" not in sample.targets:
            sample = _with_normals_from_depth(sample)
        if "depth" not in self.tasks:
            sample.targets.pop("depth", None)
            sample.masks.pop("depth", None)
        return sample

    def _resamples(self, sample: Sample) -> bool:
        """Whether resize or zoom will resample the file-resolution ``sample`` (flips and crops only move pixels)."""
        zooms = self.augment is not None and tuple(self.augment.scale_range) != (1.0, 1.0)
        return zooms or tuple(sample.image.shape[-2:]) != tuple(self.size)

    def _precomputed_normals_file(self, index: int) -> Path | None:
        if "normals" not in self.tasks or self.has_normals_gt:
            return None
        path = normals_path(self.root, self._depth_file(index), self.normals_root)
        return path if path.is_file() else None

    # ------------------------------------------------------------------ helpers for subclasses
    def depth_target(self, depth: np.ndarray, valid: np.ndarray) -> tuple[Tensor, Tensor]:
        """(depth (1, H, W) float32 metres, 0 where invalid; mask (1, H, W) bool) with ``depth_cap`` applied."""
        mask = valid & np.isfinite(depth) & (depth > 0) & (depth <= self.depth_cap)
        depth = np.where(mask, depth, 0.0).astype(np.float32)
        return torch.from_numpy(depth)[None], torch.from_numpy(mask)[None]

    def semseg_target(self, native: np.ndarray, path: Path) -> Tensor:
        """(H, W) int64 class indices of the native label ids (H, W) read from ``path``, checked against
        ``label_values`` when the loader declares them."""
        if self.label_values is not None:
            check_label_values(path, native, self.label_values, self.title,
                               self.download_hint(self.label_kind, self.root))
        return torch.from_numpy(self.classes.map_native(native))


def describe_values(values: frozenset[int]) -> str:
    """Compact text of a set of integers: "0..33" or "0..18, 255"."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in runs)


def check_label_values(path: Path, native: np.ndarray, known: frozenset[int], table: str, source: str) -> None:
    """DatasetError naming ``path`` and its first values outside ``known`` (the label table ``table``), if any;
    ``source`` says where a correct file comes from."""
    bad = unknown_label_values(native, known)
    if bad:
        raise DatasetError(f"{path}: label ids {bad} are not in the label table of {table} ({describe_values(known)});"
                           f" it is not a label map of that table: {source}")


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


def check_same_size(what: str, path: Path, array: np.ndarray, image_hw: tuple[int, int],
                    fix: str = "replace it with the release's file or regenerate it at the image's size") -> None:
    """DatasetError when ``array`` (H, W, ...) read from ``path`` does not have the image's size ``image_hw``."""
    if array.shape[:2] != tuple(image_hw):
        raise DatasetError(f"{what} {path} is {array.shape[1]}x{array.shape[0]} but its image is "
                           f"{image_hw[1]}x{image_hw[0]} (the files of one sample share one resolution); {fix}")


def _check_reader_output(dataset: DenseDataset, task: str, sample: Sample) -> None:
    hw = tuple(sample.image.shape[-2:])
    target, mask = sample.targets.get(task), sample.masks.get(task)
    if target is None or mask is None or tuple(target.shape[-2:]) != hw or mask.shape != (1, *hw) or \
            mask.dtype != torch.bool:
        raise ValueError(f"the {task!r} target reader of {type(dataset).__name__} must set sample.targets[{task!r}] "
                         f"(..., {hw[0]}, {hw[1]}) and sample.masks[{task!r}] (1, {hw[0]}, {hw[1]}) bool at the "
                         "files' resolution")


def _with_precomputed_normals(sample: Sample, path: Path) -> Sample:
    normals, valid = read_normals(path)
    check_same_size("precomputed normal map", path, normals, tuple(sample.image.shape[-2:]),
                    "delete it and rerun scripts/prepare_normals.py")
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
