"""SYNTHIA RAND-CITYSCAPES loader (http://synthia-dataset.net, the CVPR'16 "RAND-CITYSCAPES" release).

Files of the sample ``<7 digits>`` under the root:

* ``RGB/<n>.png`` 1280x760 RGB image;
* ``GT/LABELS/<n>.png`` 16-bit label image; as documented in the release's README, the class id (0 void ..
  22 lanemarking; other values are an error) is in the first channel (R) and the instance id in the second (G).
  OpenCV stores channels as BGR; :mod:`mtlda.data.io` undoes that, so channel 0 here is the file's first channel.
  Ids are mapped to the Cityscapes-16 order (class set "16");
* ``Depth/Depth/<n>.png`` 16-bit depth in **centimetres** (the README: "depth is encoded in any of the 3 channels
  in centimetres"); 0 is invalid, depths beyond ``depth_cap`` are masked out.

Intrinsics: fx = fy = 532.740352, cx = 640, cy = 380 at 1280x760 (Synthia's published camera), scaled to the file
resolution, or ``<root>/mtlda_intrinsics.json`` when present (see :func:`mtlda.data.base.fixed_intrinsics`).

Splits: ``mtlda/data/splits/synthia_{train,val}.txt`` (fixed index cut, see the README there), or ``all``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from mtlda.data.base import DenseDataset, check_same_size, fixed_intrinsics, image_tensor, rescale_K
from mtlda.data.batch import Sample
from mtlda.data.catalog import register_dataset
from mtlda.data.checks import CheckSettings, Report, build, count_note, decode_split, is_toycity_copy, missing_folders
from mtlda.data.io import DatasetError, read_rgb, read_single_channel
from mtlda.data.labels import SYNTHIA_CLASS_SETS, SYNTHIA_LABEL_VALUES

SYNTHIA_CAMERA = (532.740352, 532.740352, 640.0, 380.0, 1280, 760)
CM_PER_M = 100.0


@lru_cache(maxsize=None)
def split_names(split: str) -> tuple[str, ...]:
    """Sample names of a packaged split file (``train``, ``val``)."""
    resource = resources.files("mtlda.data") / "splits" / f"synthia_{split}.txt"
    if not resource.is_file():
        raise DatasetError(f"Synthia has no split {split!r}; choose train, val or all")
    return tuple(line.strip() for line in resource.read_text().splitlines() if line.strip())


_FOLDERS = {"rgb": ("RGB",), "labels": ("GT", "LABELS"), "depth": ("Depth", "Depth")}


def folder(root: Path, kind: str) -> Path:
    """Folder of the ``kind`` files: rgb, labels or depth."""
    return root.joinpath(*_FOLDERS[kind])


def sample_path(root: Path, kind: str, name: str) -> Path:
    return folder(root, kind) / f"{name}.png"


def read_depth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, W) float32 metres, valid (H, W) bool) of a Synthia depth PNG."""
    raw = read_single_channel(path, "Synthia depth map")
    if raw.dtype != np.uint16:
        raise DatasetError(f"{path} is {raw.dtype}, expected a 16-bit depth PNG in centimetres")
    return raw.astype(np.float32) / CM_PER_M, raw > 0


def camera_K(root: Path, image_hw: tuple[int, int]) -> torch.Tensor:
    """K (3, 3) of an image of ``image_hw`` (h, w)."""
    K, reference_hw = fixed_intrinsics(root, SYNTHIA_CAMERA)
    return rescale_K(K, reference_hw, image_hw)


@register_dataset
class SynthiaDataset(DenseDataset):
    """SYNTHIA RAND-CITYSCAPES samples of a split (``train``, ``val``, ``all``)."""

    name = "synthia"
    title = "Synthia"
    root_variable = "SYNTHIA_DIR"
    max_depth = 300.0
    download_site = "http://synthia-dataset.net/downloads/"
    sources = dict.fromkeys(_FOLDERS, "SYNTHIA-RAND-CITYSCAPES (CVPR16), one archive with RGB, GT/LABELS and "
                                      "Depth/Depth,")
    depth_kind = "depth"
    label_kind = "labels"
    label_values = SYNTHIA_LABEL_VALUES
    class_sets = SYNTHIA_CLASS_SETS
    default_class_set = "16"
    official_counts = {"train": 7520, "val": 1880}

    def _list_items(self) -> list[str]:
        rgb = folder(self.root, "rgb")
        needed = ["rgb"] + (["labels"] if "semseg" in self.tasks else [])
        needed += ["depth"] if self.tasks & {"depth", "normals"} else []
        for kind in needed:
            if not folder(self.root, kind).is_dir():
                raise DatasetError(f"Synthia folder {folder(self.root, kind)} is missing; "
                                   f"{self.download_hint(kind, self.root)}")
        on_disk = sorted(p.stem for p in rgb.glob("*.png"))
        if self.split == "all":
            return on_disk
        listed = split_names(self.split)
        present = set(on_disk)
        missing = [n for n in listed if n not in present]
        if missing and not self.allow_missing:
            raise DatasetError(
                f"{len(missing)} of {len(listed)} Synthia {self.split} images are missing under {rgb} (first: "
                f"{missing[0]}.png); complete the download ({self.download_hint('rgb', self.root)}) or use split "
                "'all'"
            )
        return [n for n in listed if n in present]

    def _depth_file(self, index: int) -> Path:
        return sample_path(self.root, "depth", self.items[index])

    def _load(self, index: int, with_depth: bool) -> Sample:
        name = self.items[index]
        rgb = read_rgb(sample_path(self.root, "rgb", name), "Synthia image")
        hw = rgb.shape[:2]
        sample = Sample(image=image_tensor(rgb), K=camera_K(self.root, hw), id=f"{self.split}/{name}")
        if "semseg" in self.tasks:
            path = sample_path(self.root, "labels", name)
            labels = read_single_channel(path, "Synthia label map", channel=0)
            check_same_size("Synthia label map", path, labels, hw)
            sample.targets["semseg"] = self.semseg_target(labels, path)
        if with_depth:
            path = sample_path(self.root, "depth", name)
            depth, valid = read_depth(path)
            check_same_size("Synthia depth map", path, depth, hw)
            sample.targets["depth"], sample.masks["depth"] = self.depth_target(depth, valid)
        return sample

    @classmethod
    def depth_files(cls, root: Path) -> list[Path]:
        """Every depth map under ``root``."""
        return sorted(folder(root, "depth").glob("*.png"))

    @classmethod
    def depth_for_normals(cls, root: Path, path: Path) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        depth, valid = read_depth(path)
        return depth, valid, camera_K(root, depth.shape)

    @classmethod
    def check(cls, root: Path, report: Report, settings: CheckSettings) -> None:
        if missing_folders(report, cls, root, {kind: folder(root, kind) for kind in _FOLDERS}):
            return
        partial_is_fine = is_toycity_copy(root)
        on_disk = {p.stem for p in folder(root, "rgb").glob("*.png")}
        for split in ("train", "val"):
            listed = split_names(split)
            found = sum(name in on_disk for name in listed)
            count_note(report, cls, split, found)
            if 0 < found < len(listed) and not partial_is_fine:
                report.problem(f"only {found} of the {len(listed)} Synthia {split} images are present; "
                               f"{cls.download_hint('rgb', root)}")
            dataset = build(report, cls, root, split, settings)
            if dataset is not None:
                decode_split(report, dataset, settings)
