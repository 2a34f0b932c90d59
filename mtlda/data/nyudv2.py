"""NYUDv2 loader for the multi-task layout of ATRC / Multi-Task-Learning-PyTorch (``NYUD_MT``).

Files of sample ``<n>`` under the root:

* ``gt_sets/{train,val}.txt``: sample names, the official 795 / 654 split;
* ``images/<n>.png`` (or ``.jpg``) 640x480 RGB image;
* ``segmentation/<n>.png`` uint8: 0 = void (ignored), v in 1..40 = NYU40 class v - 1 (other values are an error);
* ``depth/<n>.npy`` float depth in metres (0 = invalid);
* ``normals/<n>.png`` uint8 RGB, component = value / 255 * 2 - 1 (or ``.npy`` floats in [-1, 1]). **Assumed file
  axes**: x right, y up, z towards the viewer (the OpenGL-style convention of the released maps, where floors
  point up and walls facing the camera point at it). Our convention (x right, y down, z forward, facing the
  camera) is therefore (x, -y, -z) of the file: :data:`FILE_TO_CAMERA_AXES`. Pixels whose decoded vector is far
  from unit length (e.g. black) are invalid;
* ``edge/<n>.png`` (or ``.npy``): any value > 0 is an edge.

Intrinsics: fx 518.857901, fy 519.469611, cx 325.582449, cy 253.736166 at 640x480 (the NYU toolbox calibration),
scaled to the file resolution, or ``<root>/mtlda_intrinsics.json`` (see :func:`mtlda.data.base.fixed_intrinsics`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mtlda.data.base import DenseDataset, check_same_size, fixed_intrinsics, image_tensor, rescale_K
from mtlda.data.batch import Sample
from mtlda.data.catalog import register_dataset
from mtlda.data.checks import CheckSettings, Report, build, count_note, decode_split, missing_folders
from mtlda.data.io import DatasetError, read_npy, read_png_unchanged, read_rgb, read_single_channel, read_text_lines
from mtlda.data.labels import NYUDV2_CLASS_SETS, NYUDV2_LABEL_VALUES

NYU_CAMERA = (518.857901, 519.469611, 325.582449, 253.736166, 640, 480)
# Sign of each file axis in the camera frame: ours = file * FILE_TO_CAMERA_AXES (see the module docstring).
FILE_TO_CAMERA_AXES = np.array([1.0, -1.0, -1.0], dtype=np.float32)
_UNIT_TOLERANCE = 0.25  # decoded normals whose length is outside 1 +- this are invalid
_SUFFIXES = {"images": (".png", ".jpg"), "segmentation": (".png",), "depth": (".npy",), "normals": (".png", ".npy"),
             "edge": (".png", ".npy")}


def sample_file(root: Path, kind: str, name: str) -> Path:
    """The file of ``kind`` (images, segmentation, depth, normals, edge) of sample ``name`` (first suffix found)."""
    candidates = [root / kind / f"{name}{suffix}" for suffix in _SUFFIXES[kind]]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"NYUDv2 {kind} file not found: {candidates[0]} (suffixes tried: "
                            f"{', '.join(_SUFFIXES[kind])}); {NYUDv2Dataset.download_hint(kind, root)}")


def decode_normals(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normals (H, W, 3) float32 in our camera convention, valid (H, W) bool) of a file's (H, W, 3) values:
    uint8 (value / 255 * 2 - 1) or floats in [-1, 1]."""
    n = values.astype(np.float32) / 255.0 * 2.0 - 1.0 if values.dtype == np.uint8 else values.astype(np.float32)
    length = np.linalg.norm(n, axis=-1)
    valid = np.abs(length - 1.0) <= _UNIT_TOLERANCE
    n = np.where(valid[..., None], n / np.maximum(length, 1e-6)[..., None] * FILE_TO_CAMERA_AXES, 0.0)
    return n.astype(np.float32), valid


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 file values of camera-convention unit normals (H, W, 3) (inverse of :func:`decode_normals`)."""
    file_axes = normals * FILE_TO_CAMERA_AXES
    return np.rint((np.clip(file_axes, -1.0, 1.0) + 1.0) / 2.0 * 255.0).astype(np.uint8)


def camera_K(root: Path, image_hw: tuple[int, int]) -> torch.Tensor:
    K, reference_hw = fixed_intrinsics(root, NYU_CAMERA)
    return rescale_K(K, reference_hw, image_hw)


@register_dataset
class NYUDv2Dataset(DenseDataset):
    """NYUDv2 samples of ``gt_sets/<split>.txt``; ground-truth normals and edges."""

    name = "nyudv2"
    title = "NYUDv2"
    root_variable = "NYUDV2_DIR"
    max_depth = 10.0
    download_site = ("https://github.com/SimonVandenhende/Multi-Task-Learning-PyTorch (or "
                     "https://github.com/brdav/atrc)")
    sources = dict.fromkeys((*_SUFFIXES, "gt_sets"), "NYUD_MT (images, segmentation, depth, normals, edge, gt_sets)")
    depth_kind = "depth"
    label_kind = "segmentation"
    label_values = NYUDV2_LABEL_VALUES
    class_sets = NYUDV2_CLASS_SETS
    default_class_set = "40"
    official_counts = {"train": 795, "val": 654}
    builtin_targets = frozenset({"semseg", "depth", "normals", "edges"})
    has_normals_gt = True

    def _list_items(self) -> list[str]:
        split_file = self.root / "gt_sets" / f"{self.split}.txt"
        if not split_file.is_file():
            raise DatasetError(f"NYUDv2 split file {split_file} is missing (splits: train, val); "
                               f"{self.download_hint('gt_sets', self.root)}")
        kinds = ["images"] + [k for task, k in (("semseg", "segmentation"), ("depth", "depth"),
                                                ("normals", "normals"), ("edges", "edge")) if task in self.tasks]
        for kind in kinds:
            if not (self.root / kind).is_dir():
                raise DatasetError(f"NYUDv2 folder {self.root / kind} is missing; "
                                   f"{self.download_hint(kind, self.root)}")
        return read_text_lines(split_file, "NYUDv2 split file")

    def _depth_file(self, index: int) -> Path:
        return self.root / "depth" / f"{self.items[index]}.npy"

    def _load(self, index: int, with_depth: bool) -> Sample:
        name = self.items[index]
        rgb = read_rgb(sample_file(self.root, "images", name), "NYUDv2 image")
        hw = rgb.shape[:2]
        sample = Sample(image=image_tensor(rgb), K=camera_K(self.root, hw), id=f"{self.split}/{name}")
        if "semseg" in self.tasks:
            path = sample_file(self.root, "segmentation", name)
            labels = read_single_channel(path, "NYUDv2 label map")
            check_same_size("NYUDv2 label map", path, labels, hw)
            sample.targets["semseg"] = self.semseg_target(labels, path)
        if with_depth:
            path = sample_file(self.root, "depth", name)
            depth = np.squeeze(read_npy(path, "NYUDv2 depth map")).astype(np.float32)
            check_same_size("NYUDv2 depth map", path, depth, hw)
            sample.targets["depth"], sample.masks["depth"] = self.depth_target(depth, depth > 0)
        if "normals" in self.tasks:
            path = sample_file(self.root, "normals", name)
            values = read_npy(path, "NYUDv2 normal map") if path.suffix == ".npy" else read_png_unchanged(
                path, "NYUDv2 normal map")
            if values.ndim != 3 or values.shape[2] != 3:
                raise DatasetError(f"{path} is not a 3-channel normal map (shape {values.shape})")
            check_same_size("NYUDv2 normal map", path, values, hw)
            normals, valid = decode_normals(values)
            sample.targets["normals"] = torch.from_numpy(normals).permute(2, 0, 1).contiguous()
            sample.masks["normals"] = torch.from_numpy(valid)[None]
        if "edges" in self.tasks:
            path = sample_file(self.root, "edge", name)
            edges = np.squeeze(read_npy(path, "NYUDv2 edge map")) if path.suffix == ".npy" else read_single_channel(
                path, "NYUDv2 edge map")
            check_same_size("NYUDv2 edge map", path, edges, hw)
            sample.targets["edges"] = torch.from_numpy((edges > 0).astype(np.float32))[None]
            sample.masks["edges"] = torch.ones(1, *hw, dtype=torch.bool)
        return sample

    @classmethod
    def check(cls, root: Path, report: Report, settings: CheckSettings) -> None:
        if missing_folders(report, cls, root, {kind: root / kind for kind in ("gt_sets", *_SUFFIXES)}):
            return
        for split in ("train", "val"):
            dataset = build(report, cls, root, split, settings)
            if dataset is not None:
                count_note(report, cls, split, len(dataset))
                decode_split(report, dataset, settings)
