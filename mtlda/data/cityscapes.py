"""Cityscapes loader (official folder layout, https://www.cityscapes-dataset.com).

Files of the sample ``<city>_<seq>_<frame>`` of split ``<split>`` under the root:

* ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` RGB image;
* ``gtFine/<split>/<city>/..._gtFine_labelIds.png`` label ids 0..33 (mapped by the class set, see :mod:`labels`),
  or, when that file is absent, mmsegmentation's ``..._gtFine_labelTrainIds.png`` (trainIds 0..18, 255 ignored),
  read through the same class set keyed by trainIds (every built-in set can be: their classes all have trainIds).
  labelIds win when both exist: they map to every class set;
* ``disparity/<split>/<city>/..._disparity.png`` uint16 stereo disparity at the image's size: p > 0 is
  d = (p - 1) / 256 pixels, p = 0 is invalid (and p = 1, a zero disparity, too);
* ``camera/<split>/<city>/..._camera.json``: ``extrinsic.baseline`` (metres) and ``intrinsic.fx/fy/u0/v0``, the
  camera of the ``leftImg8bit`` file's resolution (always read: every sample carries K);
* ``leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame +- k>_leftImg8bit.png`` neighbour frames (only with
  ``frames``; samples with a missing neighbour are dropped and counted in the log).

Metric depth = baseline * fx / d. Depths beyond ``depth_cap`` are masked out.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtlda.data.base import (
    DenseDataset,
    check_label_values,
    check_same_size,
    drop_missing_neighbours,
    image_tensor,
    intrinsics_matrix,
)
from mtlda.data.batch import Sample
from mtlda.data.catalog import register_dataset
from mtlda.data.checks import CheckSettings, Report, build, count_note, decode_split, missing_folders
from mtlda.data.io import DatasetError, png_size, read_json, read_rgb, read_single_channel
from mtlda.data.labels import (
    CITYSCAPES_CLASS_SETS,
    CITYSCAPES_LABELIDS_VALUES,
    CITYSCAPES_TRAINIDS_VALUES,
    ClassSet,
    cityscapes_train_id_set,
)
from mtlda.geometry import disparity_to_depth

_IMAGE_SUFFIX = "_leftImg8bit.png"
_SUFFIXES = {"leftImg8bit": _IMAGE_SUFFIX, "gtFine": "_gtFine_labelIds.png", "disparity": "_disparity.png",
             "camera": "_camera.json"}
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


def sample_stems(root: Path, split: str) -> list[tuple[str, str]]:
    """Sorted (city, stem) pairs of ``leftImg8bit/<split>``; DatasetError when the folder is missing."""
    folder = root / "leftImg8bit" / split
    if not folder.is_dir():
        raise DatasetError(f"Cityscapes folder {folder} is missing; "
                           f"{CityscapesDataset.download_hint('leftImg8bit', root)}")
    return sorted(
        (path.parent.name, path.name[: -len(_IMAGE_SUFFIX)]) for path in folder.glob(f"*/*{_IMAGE_SUFFIX}")
    )


def sample_path(root: Path, kind: str, split: str, city: str, stem: str) -> Path:
    """Path of one file of a sample; ``kind`` is leftImg8bit, gtFine (labelIds), disparity or camera."""
    return root / kind / split / city / f"{stem}{_SUFFIXES[kind]}"


def label_file(root: Path, split: str, city: str, stem: str) -> tuple[Path, bool]:
    """(label map of a sample, whether it holds trainIds): the labelIds file, else the labelTrainIds file when only
    that exists (the labelIds path when neither does)."""
    label_ids = sample_path(root, "gtFine", split, city, stem)
    train_ids = label_ids.with_name(f"{stem}{TRAIN_IDS_SUFFIX}")
    if not label_ids.is_file() and train_ids.is_file():
        return train_ids, True
    return label_ids, False


def neighbour_path(root: Path, split: str, city: str, stem: str, offset: int) -> Path:
    """leftImg8bit_sequence frame at ``offset`` from the sample ``stem`` (``<city>_<seq>_<frame>``)."""
    prefix, frame = stem.rsplit("_", 1)
    return root / "leftImg8bit_sequence" / split / city / f"{prefix}_{int(frame) + offset:06d}{_IMAGE_SUFFIX}"


def read_camera(path: Path) -> tuple[Tensor, float]:
    """(K (3, 3) at the leftImg8bit resolution, stereo baseline in metres) of a camera JSON file."""
    data = read_json(path, "Cityscapes camera file")
    try:
        intrinsic, baseline = data["intrinsic"], float(data["extrinsic"]["baseline"])
        K = intrinsics_matrix(*(float(intrinsic[k]) for k in ("fx", "fy", "u0", "v0")))
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path} lacks extrinsic.baseline or intrinsic.fx/fy/u0/v0 ({err!r}); re-extract "
                           "camera_trainvaltest.zip") from err
    return K, baseline


def read_depth(disparity_file: Path, fx: float, baseline: float) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, W) float32 metres, valid (H, W) bool) of a disparity PNG whose camera has focal length ``fx``."""
    raw = read_single_channel(disparity_file, "Cityscapes disparity map")
    if raw.dtype != np.uint16:
        raise DatasetError(f"{disparity_file} is {raw.dtype}, expected a 16-bit disparity PNG; re-extract "
                           "disparity_trainvaltest.zip")
    disparity = np.where(raw > 0, (raw.astype(np.float32) - 1.0) / 256.0, 0.0).astype(np.float32)
    depth = disparity_to_depth(torch.from_numpy(disparity)[None, None], baseline, fx)[0, 0].numpy()
    return depth, depth > 0


@register_dataset
class CityscapesDataset(DenseDataset):
    """Cityscapes samples of one split (``train``, ``val``, ``test``); see the module docstring for the files."""

    name = "cityscapes"
    title = "Cityscapes"
    root_variable = "CITYSCAPES_DIR"
    max_depth = 300.0
    download_site = "https://www.cityscapes-dataset.com/downloads/"
    sources = {"leftImg8bit": "leftImg8bit_trainvaltest.zip", "gtFine": "gtFine_trainvaltest.zip",
               "disparity": "disparity_trainvaltest.zip", "camera": "camera_trainvaltest.zip",
               "leftImg8bit_sequence": "leftImg8bit_sequence_trainvaltest.zip"}
    depth_kind = "disparity"
    label_kind = "gtFine"
    label_values = CITYSCAPES_LABELIDS_VALUES
    class_sets = CITYSCAPES_CLASS_SETS
    default_class_set = "19"
    official_counts = {"train": 2975, "val": 500}
    has_sequences = True

    def _list_items(self) -> list[tuple[str, str]]:
        items = sample_stems(self.root, self.split)
        needed = ["camera"] + (["gtFine"] if "semseg" in self.tasks else [])
        needed += ["disparity"] if self.tasks & {"depth", "normals"} else []
        if self.frames:
            needed.append("leftImg8bit_sequence")
        for kind in needed:
            if not (self.root / kind / self.split).is_dir():
                raise DatasetError(f"Cityscapes folder {self.root / kind / self.split} is missing; "
                                   f"{self.download_hint(kind, self.root)}")
        if self.frames:
            has_all = [all(neighbour_path(self.root, self.split, c, s, k).is_file() for k in self.frames)
                       for c, s in items]
            items = drop_missing_neighbours(self.name, items, has_all)
        return items

    @cached_property
    def _train_id_classes(self) -> ClassSet:
        return cityscapes_train_id_set(self.classes)

    def _depth_file(self, index: int) -> Path:
        city, stem = self.items[index]
        return sample_path(self.root, "disparity", self.split, city, stem)

    def _load(self, index: int, with_depth: bool) -> Sample:
        city, stem = self.items[index]
        path = lambda kind: sample_path(self.root, kind, self.split, city, stem)  # noqa: E731
        rgb = read_rgb(path("leftImg8bit"), "Cityscapes image")
        hw = rgb.shape[:2]
        K, baseline = read_camera(path("camera"))
        sample = Sample(image=image_tensor(rgb), K=K, id=f"{self.split}/{city}/{stem}")
        for offset in self.frames:
            frame_file = neighbour_path(self.root, self.split, city, stem, offset)
            frame = read_rgb(frame_file, "Cityscapes sequence frame")
            check_same_size("Cityscapes sequence frame", frame_file, frame, hw)
            sample.frames[offset] = image_tensor(frame)
        if "semseg" in self.tasks:
            sample.targets["semseg"] = self._semseg(*label_file(self.root, self.split, city, stem), hw)
        if with_depth:
            depth, valid = read_depth(path("disparity"), float(K[0, 0]), baseline)
            check_same_size("Cityscapes disparity map", path("disparity"), depth, hw)
            sample.targets["depth"], sample.masks["depth"] = self.depth_target(depth, valid)
        return sample

    def _semseg(self, path: Path, train_ids: bool, hw: tuple[int, int]) -> Tensor:
        labels = read_single_channel(path, "Cityscapes label map")
        check_same_size("Cityscapes label map", path, labels, hw)
        if not train_ids:
            return self.semseg_target(labels, path)
        check_label_values(path, labels, CITYSCAPES_TRAINIDS_VALUES, "Cityscapes trainIds",
                           self.download_hint("gtFine", self.root))
        try:
            classes = self._train_id_classes
        except ValueError as err:
            raise DatasetError(f"{path} holds trainIds, but {err}") from err
        return torch.from_numpy(classes.map_native(labels))

    @classmethod
    def depth_files(cls, root: Path) -> list[Path]:
        """Every disparity map of every split under ``root``."""
        return sorted((root / "disparity").glob("*/*/*_disparity.png"))

    @classmethod
    def depth_for_normals(cls, root: Path, path: Path) -> tuple[np.ndarray, np.ndarray, Tensor]:
        split, city = path.parent.parent.name, path.parent.name
        stem = path.name[: -len(_SUFFIXES["disparity"])]
        K, baseline = read_camera(sample_path(root, "camera", split, city, stem))
        depth, valid = read_depth(path, float(K[0, 0]), baseline)
        image_file = sample_path(root, "leftImg8bit", split, city, stem)
        if image_file.is_file():
            check_same_size("Cityscapes disparity map", path, depth, png_size(image_file))
        return depth, valid, K

    @classmethod
    def check(cls, root: Path, report: Report, settings: CheckSettings) -> None:
        for split in ("train", "val"):
            folders = {kind: root / kind / split for kind in ("leftImg8bit", "gtFine", "disparity", "camera")}
            if missing_folders(report, cls, root, folders):
                continue
            stems = sample_stems(root, split)
            count_note(report, cls, split, len(stems))
            _report_absent_files(report, cls, root, split, stems)
            dataset = build(report, cls, root, split, settings)
            if dataset is not None:
                decode_split(report, dataset, settings)
        if not (root / "leftImg8bit_sequence").is_dir():
            report.note("note: leftImg8bit_sequence is absent; only data.frames (self-supervised depth) needs it: "
                        f"{cls.download_hint('leftImg8bit_sequence', root)}")


def _report_absent_files(report: Report, cls: type[CityscapesDataset], root: Path, split: str,
                         stems: list[tuple[str, str]]) -> None:
    """Problems for images without label map, disparity or camera file; a note when labels are trainIds files."""
    labels = [label_file(root, split, c, s) for c, s in stems]
    absent = {"gtFine": [path for path, _ in labels if not path.is_file()]}
    for kind in ("disparity", "camera"):
        absent[kind] = [p for p in (sample_path(root, kind, split, c, s) for c, s in stems) if not p.is_file()]
    for kind, paths in absent.items():
        if paths:
            report.problem(f"{len(paths)} of {len(stems)} {split} images have no {kind} file (first: {paths[0]}); "
                           f"{cls.download_hint(kind, root)}")
    train_ids = sum(is_train_ids for _, is_train_ids in labels)
    if train_ids:
        report.note(f"note: {train_ids} of {len(stems)} {split} label maps are mmsegmentation *{TRAIN_IDS_SUFFIX} "
                    "files (no *_gtFine_labelIds.png beside them); they are read as trainIds")
