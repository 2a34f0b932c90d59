"""Cityscapes loader (official folder layout, https://www.cityscapes-dataset.com).

Files of the sample ``<city>_<seq>_<frame>`` of split ``<split>`` under the root:

* ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` RGB image;
* ``gtFine/<split>/<city>/..._gtFine_labelIds.png`` label ids (mapped by the class set, see :mod:`labels`);
* ``disparity/<split>/<city>/..._disparity.png`` uint16 stereo disparity: p > 0 is d = (p - 1) / 256 pixels of the
  disparity file, p = 0 is invalid (and p = 1, a zero disparity, too);
* ``camera/<split>/<city>/..._camera.json``: ``extrinsic.baseline`` (metres) and ``intrinsic.fx/fy/u0/v0``, the
  camera of the ``leftImg8bit`` file's resolution (always read: every sample carries K);
* ``leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame +- k>_leftImg8bit.png`` neighbour frames (only with
  ``frames``; samples with a missing neighbour are dropped and counted in the log).

Metric depth = baseline * fx_disp / d with fx_disp the focal length at the disparity file's resolution (the same
as the image's in the official release). Depths beyond ``depth_cap`` are masked out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtlda.data.targets import resize_nearest
from mtlda.data.base import (
    DenseDataset,
    check_same_size,
    drop_missing_neighbours,
    image_tensor,
    intrinsics_matrix,
    rescale_K,
)
from mtlda.data.batch import Sample
from mtlda.data.io import DatasetError, png_size, read_json, read_rgb, read_single_channel
from mtlda.geometry import disparity_to_depth

DOWNLOAD_HINT = ("download leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip, disparity_trainvaltest.zip and "
                 "camera_trainvaltest.zip (plus leftImg8bit_sequence_trainvaltest.zip for frames) from "
                 "https://www.cityscapes-dataset.com/downloads/ and extract them into one folder")

_IMAGE_SUFFIX = "_leftImg8bit.png"


def sample_stems(root: Path, split: str) -> list[tuple[str, str]]:
    """Sorted (city, stem) pairs of ``leftImg8bit/<split>``; DatasetError when the folder is missing."""
    folder = root / "leftImg8bit" / split
    if not folder.is_dir():
        raise DatasetError(f"Cityscapes folder {folder} is missing; {DOWNLOAD_HINT}")
    return sorted(
        (path.parent.name, path.name[: -len(_IMAGE_SUFFIX)]) for path in folder.glob(f"*/*{_IMAGE_SUFFIX}")
    )


def sample_path(root: Path, kind: str, split: str, city: str, stem: str) -> Path:
    """Path of one file of a sample; ``kind`` is leftImg8bit, gtFine, disparity or camera."""
    suffix = {"leftImg8bit": _IMAGE_SUFFIX, "gtFine": "_gtFine_labelIds.png", "disparity": "_disparity.png",
              "camera": "_camera.json"}[kind]
    return root / kind / split / city / f"{stem}{suffix}"


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
        raise DatasetError(f"{path} lacks extrinsic.baseline or intrinsic.fx/fy/u0/v0 ({err!r})") from err
    return K, baseline


def read_depth(disparity_file: Path, K_image: Tensor, image_hw: tuple[int, int], baseline: float) -> tuple[
        np.ndarray, np.ndarray]:
    """(depth (H, W) float32 metres at the disparity file's resolution, valid (H, W) bool) of a disparity PNG.

    ``K_image`` belongs to an image of ``image_hw`` (h, w); fx is rescaled to the disparity file's width.
    """
    raw = read_single_channel(disparity_file, "Cityscapes disparity map")
    if raw.dtype != np.uint16:
        raise DatasetError(f"{disparity_file} is {raw.dtype}, expected a 16-bit disparity PNG")
    fx = float(rescale_K(K_image, image_hw, raw.shape[:2])[0, 0])
    disparity = np.where(raw > 0, (raw.astype(np.float32) - 1.0) / 256.0, 0.0).astype(np.float32)
    depth = disparity_to_depth(torch.from_numpy(disparity)[None, None], baseline, fx)[0, 0].numpy()
    return depth, depth > 0


def depth_files(root: Path) -> list[Path]:
    """Every disparity map of every split under ``root``."""
    return sorted((root / "disparity").glob("*/*/*_disparity.png"))


def depth_for_normals(root: Path, disparity_file: Path) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """(depth (H, W) metres, valid (H, W), K (3, 3)) at the resolution of a file listed by :func:`depth_files`."""
    split, city = disparity_file.parent.parent.name, disparity_file.parent.name
    stem = disparity_file.name[: -len("_disparity.png")]
    K_image, baseline = read_camera(sample_path(root, "camera", split, city, stem))
    image_file = sample_path(root, "leftImg8bit", split, city, stem)
    image_hw = png_size(image_file) if image_file.is_file() else png_size(disparity_file)
    depth, valid = read_depth(disparity_file, K_image, image_hw, baseline)
    return depth, valid, rescale_K(K_image, image_hw, depth.shape)


class CityscapesDataset(DenseDataset):
    """Cityscapes samples of one split (``train``, ``val``, ``test``); see the module docstring for the files."""

    name = "cityscapes"
    has_sequences = True

    def _list_items(self) -> list[tuple[str, str]]:
        items = sample_stems(self.root, self.split)
        needed = ["camera"] + (["gtFine"] if "semseg" in self.tasks else [])
        needed += ["disparity"] if self.tasks & {"depth", "normals"} else []
        for kind in needed:
            if not (self.root / kind / self.split).is_dir():
                raise DatasetError(f"Cityscapes folder {self.root / kind / self.split} is missing; {DOWNLOAD_HINT}")
        if self.frames:
            if not (self.root / "leftImg8bit_sequence" / self.split).is_dir():
                raise DatasetError(f"Cityscapes folder {self.root / 'leftImg8bit_sequence' / self.split} is missing "
                                   f"(needed for data.frames); {DOWNLOAD_HINT}")
            has_all = [all(neighbour_path(self.root, self.split, c, s, k).is_file() for k in self.frames)
                       for c, s in items]
            items = drop_missing_neighbours(self.name, items, has_all)
        return items

    def _depth_file(self, index: int) -> Path:
        city, stem = self.items[index]
        return sample_path(self.root, "disparity", self.split, city, stem)

    def _load(self, index: int, with_depth: bool) -> Sample:
        city, stem = self.items[index]
        path = lambda kind: sample_path(self.root, kind, self.split, city, stem)  # noqa: E731
        rgb = read_rgb(path("leftImg8bit"), "Cityscapes image")
        K, baseline = read_camera(path("camera"))
        sample = Sample(image=image_tensor(rgb), K=K, id=f"{self.split}/{city}/{stem}")
        for offset in self.frames:
            frame = read_rgb(neighbour_path(self.root, self.split, city, stem, offset), "Cityscapes sequence frame")
            if frame.shape != rgb.shape:
                raise DatasetError(f"sequence frame {offset:+d} of {stem} is {frame.shape}, its image {rgb.shape}")
            sample.frames[offset] = image_tensor(frame)
        if "semseg" in self.tasks:
            label_file = path("gtFine")
            labels = read_single_channel(label_file, "Cityscapes label map")
            check_same_size("Cityscapes label map", label_file, labels, rgb.shape[:2])
            sample.targets["semseg"] = self.semseg_target(labels)
        if with_depth:
            depth, valid = read_depth(path("disparity"), K, rgb.shape[:2], baseline)
            depth_t, mask = self.depth_target(depth, valid)
            if depth.shape != rgb.shape[:2]:
                depth_t, mask = resize_nearest(depth_t, rgb.shape[:2]), resize_nearest(mask, rgb.shape[:2])
            sample.targets["depth"], sample.masks["depth"] = depth_t, mask
        return sample
