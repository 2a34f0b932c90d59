"""Virtual KITTI 2 loader (https://europe.naverlabs.com/research/computer-vision/proxy-virtual-worlds-vkitti-2/).

Files of frame ``<5 digits>`` of scene ``Scene<NN>`` and variation ``<var>`` (``clone`` by default; any of the
release's variations such as ``15-deg-left``, ``fog``, ``morning``) under the root, left camera ``Camera_0``:

* ``Scene<NN>/<var>/frames/rgb/Camera_0/rgb_<n>.jpg`` RGB image (1242x375);
* ``Scene<NN>/<var>/frames/classSegmentation/Camera_0/classgt_<n>.png`` colour-coded classes (palette in
  :data:`mtlda.data.labels.VKITTI2_CLASSES`; other colours, such as Undefined (0, 0, 0), are ignored:
  ``scripts/check_data.py`` reports them);
* ``Scene<NN>/<var>/frames/depth/Camera_0/depth_<n>.png`` uint16 depth in **centimetres**; 65535 (655.35 m, sky and
  anything farther) is invalid, as is 0;
* ``Scene<NN>/<var>/intrinsic.txt`` (header ``frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]``) per-frame intrinsics of
  the file resolution; without it the release's constant camera (725.0087, 725.0087, 620.5, 187.0 at 1242x375).

Paths are built component by component (never by replacing "rgb" in a path string).
Splits by scene: ``mtlda/data/splits/vkitti2_{train,val}.txt`` (see the README there), or ``all`` scenes; the paper's
protocol, a fixed random 80/20 frame split (neighbouring frames on both sides), is ``paper_train`` / ``paper_val``
(``vkitti2_paper_{train,val}.txt``, lines ``Scene<NN> <frame>``).
Neighbour frames (``frames``) are ``rgb_<n +- k>.jpg`` of the same scene and variation.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from mtlda.data.base import (
    DenseDataset,
    check_same_size,
    drop_missing_neighbours,
    image_tensor,
    intrinsics_matrix,
    rescale_K,
)
from mtlda.data.batch import Sample
from mtlda.data.catalog import register_dataset
from mtlda.data.checks import CheckSettings, Report, build, count_note, decode_split, is_toycity_copy
from mtlda.data.io import DatasetError, read_png_unchanged, read_rgb, read_single_channel, read_text_lines
from mtlda.data.labels import VKITTI2_CLASS_SETS, VKITTI2_CLASSES, decode_vkitti2_colors

VKITTI2_CAMERA = (725.0087, 725.0087, 620.5, 187.0, 1242, 375)
DEPTH_INVALID = 65535
CM_PER_M = 100.0
CAMERA = "Camera_0"
DEFAULT_VARIATION = "clone"
_KINDS = {"rgb": ("rgb", "rgb", "jpg"), "labels": ("classSegmentation", "classgt", "png"),
          "depth": ("depth", "depth", "png")}


SPLITS = ("train", "val", "paper_train", "paper_val", "all")


def _split_lines(split: str) -> list[str]:
    resource = resources.files("mtlda.data") / "splits" / f"vkitti2_{split}.txt"
    if split == "all" or not resource.is_file():
        raise DatasetError(f"Virtual KITTI 2 has no split file {split!r}; choose one of {', '.join(SPLITS)}")
    return [line.strip() for line in resource.read_text().splitlines() if line.strip()]


@lru_cache(maxsize=None)
def split_scenes(split: str) -> tuple[str, ...]:
    """Scene names of a packaged split file (``train``, ``val``, ``paper_train``, ``paper_val``)."""
    return tuple(dict.fromkeys(line.split()[0] for line in _split_lines(split)))


@lru_cache(maxsize=None)
def split_frames(split: str) -> frozenset[tuple[str, int]] | None:
    """(scene, frame) pairs of a frame-level split file (the paper's), None for a split by whole scenes."""
    fields = [line.split() for line in _split_lines(split)]
    if all(len(f) == 1 for f in fields):
        return None
    return frozenset((scene, int(frame)) for scene, frame in fields)


def frame_folder(root: Path, scene: str, variation: str, kind: str) -> Path:
    """Folder of the ``kind`` (rgb, labels, depth) files of Camera_0."""
    return root / scene / variation / "frames" / _KINDS[kind][0] / CAMERA


def frame_path(root: Path, scene: str, variation: str, kind: str, frame: int) -> Path:
    _, prefix, suffix = _KINDS[kind]
    return frame_folder(root, scene, variation, kind) / f"{prefix}_{frame:05d}.{suffix}"


def read_intrinsics(path: Path) -> dict[int, torch.Tensor]:
    """K (3, 3) of Camera_0 per frame number of an ``intrinsic.txt`` file."""
    lines = read_text_lines(path, "Virtual KITTI 2 intrinsics file")
    result: dict[int, torch.Tensor] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        try:
            frame, camera = int(fields[0]), int(fields[1])
            fx, fy, cx, cy = (float(v) for v in fields[2:6])
        except (IndexError, ValueError) as err:
            raise DatasetError(f"{path} line {number}: expected 'frame cameraID fx fy cx cy', got {line!r}") from err
        if camera == 0:
            result[frame] = intrinsics_matrix(fx, fy, cx, cy)
    return result


def scene_intrinsics(root: Path, scene: str, variation: str) -> dict[int, torch.Tensor] | None:
    """Per-frame Camera_0 K of ``<root>/<scene>/<variation>/intrinsic.txt``, None when the file is absent."""
    path = root / scene / variation / "intrinsic.txt"
    return read_intrinsics(path) if path.is_file() else None


def frame_K(per_frame: dict[int, torch.Tensor] | None, frame: int, image_hw: tuple[int, int],
            folder: Path) -> torch.Tensor:
    """K (3, 3) of ``frame`` from a scene's intrinsics (None: the release's constant camera scaled to
    ``image_hw``); ``folder`` names the scene/variation folder in errors."""
    if per_frame is None:
        fx, fy, cx, cy, width, height = VKITTI2_CAMERA
        return rescale_K(intrinsics_matrix(fx, fy, cx, cy), (height, width), image_hw)
    if frame not in per_frame:
        raise DatasetError(f"{folder / 'intrinsic.txt'} has no Camera_0 row for frame {frame}")
    return per_frame[frame]


def read_depth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, W) float32 metres, valid (H, W) bool) of a VKITTI2 depth PNG (65535 and 0 invalid)."""
    raw = read_single_channel(path, "Virtual KITTI 2 depth map")
    if raw.dtype != np.uint16:
        raise DatasetError(f"{path} is {raw.dtype}, expected a 16-bit depth PNG in centimetres")
    return raw.astype(np.float32) / CM_PER_M, (raw > 0) & (raw != DEPTH_INVALID)


@register_dataset
class VKITTI2Dataset(DenseDataset):
    """Virtual KITTI 2 frames of a split (by scene: ``train``, ``val``, ``all``; by frame, the paper's:
    ``paper_train``, ``paper_val``) in one ``variation``."""

    name = "vkitti2"
    title = "Virtual KITTI 2"
    root_variable = "VKITTI2_DIR"
    max_depth = 300.0
    download_site = "https://europe.naverlabs.com/research/computer-vision/proxy-virtual-worlds-vkitti-2/"
    sources = {"rgb": "vkitti_2.0.3_rgb.tar", "labels": "vkitti_2.0.3_classSegmentation.tar",
               "depth": "vkitti_2.0.3_depth.tar", "intrinsics": "vkitti_2.0.3_textgt.tar.gz"}
    depth_kind = "depth"
    label_kind = "labels"
    class_sets = VKITTI2_CLASS_SETS
    default_class_set = "14"
    official_counts = {"Scene01": 447, "Scene02": 233, "Scene06": 270, "Scene18": 339, "Scene20": 837}
    config_options = {"variation": "Virtual KITTI 2 variation: clone (default), fog, morning, 15-deg-left, ..."}
    has_sequences = True

    def __init__(self, *args, variation: str = DEFAULT_VARIATION, **kwargs) -> None:
        self.variation = variation
        self._intrinsics: dict[str, dict[int, torch.Tensor] | None] = {}
        super().__init__(*args, **kwargs)

    def _scenes(self) -> list[str]:
        if self.split == "all":
            scenes = sorted(p.name for p in self.root.glob("Scene*") if (p / self.variation).is_dir())
            if not scenes:
                raise DatasetError(f"no Scene*/{self.variation} folder under {self.root}; "
                                   f"{self.download_hint('rgb', self.root)}")
            return scenes
        scenes = split_scenes(self.split)
        present = [s for s in scenes if (self.root / s / self.variation).is_dir()]
        if len(present) < len(scenes) and not self.allow_missing:
            missing = sorted(set(scenes) - set(present))
            raise DatasetError(f"Virtual KITTI 2 scenes {missing} of split {self.split!r} have no folder "
                               f"{self.root}/<scene>/{self.variation}; {self.download_hint('rgb', self.root)}")
        return present

    def _list_items(self) -> list[tuple[str, int]]:
        items: list[tuple[str, int]] = []
        kinds = ["rgb"] + (["labels"] if "semseg" in self.tasks else [])
        kinds += ["depth"] if self.tasks & {"depth", "normals"} else []
        for scene in self._scenes():
            for kind in kinds:
                if not frame_folder(self.root, scene, self.variation, kind).is_dir():
                    raise DatasetError(f"Virtual KITTI 2 folder {frame_folder(self.root, scene, self.variation, kind)}"
                                       f" is missing; {self.download_hint(kind, self.root)}")
            self._intrinsics[scene] = scene_intrinsics(self.root, scene, self.variation)
            rgb = frame_folder(self.root, scene, self.variation, "rgb")
            items += sorted((scene, int(p.stem.split("_")[1])) for p in rgb.glob("rgb_*.jpg"))
        listed = split_frames(self.split) if self.split != "all" else None
        if listed is not None:
            items = [item for item in items if item in listed]
        if self.frames:
            has_all = [all(frame_path(self.root, s, self.variation, "rgb", f + k).is_file() for k in self.frames)
                       for s, f in items]
            items = drop_missing_neighbours(self.name, items, has_all)
        return items

    def _depth_file(self, index: int) -> Path:
        scene, frame = self.items[index]
        return frame_path(self.root, scene, self.variation, "depth", frame)

    def _load(self, index: int, with_depth: bool) -> Sample:
        scene, frame = self.items[index]
        path = lambda kind, f=frame: frame_path(self.root, scene, self.variation, kind, f)  # noqa: E731
        rgb = read_rgb(path("rgb"), "Virtual KITTI 2 image")
        hw = rgb.shape[:2]
        K = frame_K(self._intrinsics[scene], frame, hw, self.root / scene / self.variation)
        sample = Sample(image=image_tensor(rgb), K=K,
                        id=f"{scene}/{self.variation}/{frame:05d}")
        for offset in self.frames:
            neighbour = read_rgb(path("rgb", frame + offset), "Virtual KITTI 2 neighbour frame")
            check_same_size("Virtual KITTI 2 neighbour frame", path("rgb", frame + offset), neighbour, hw)
            sample.frames[offset] = image_tensor(neighbour)
        if "semseg" in self.tasks:
            colors = read_png_unchanged(path("labels"), "Virtual KITTI 2 class map")
            if colors.ndim != 3 or colors.shape[2] != 3 or colors.dtype != np.uint8:
                raise DatasetError(f"{path('labels')} is not an 8-bit RGB class map ({colors.shape} {colors.dtype})")
            check_same_size("Virtual KITTI 2 class map", path("labels"), colors, hw)
            sample.targets["semseg"] = self.semseg_target(decode_vkitti2_colors(colors), path("labels"))
        if with_depth:
            depth, valid = read_depth(path("depth"))
            check_same_size("Virtual KITTI 2 depth map", path("depth"), depth, hw)
            sample.targets["depth"], sample.masks["depth"] = self.depth_target(depth, valid)
        return sample

    @classmethod
    def depth_files(cls, root: Path) -> list[Path]:
        """Every Camera_0 depth map of every scene and variation under ``root``."""
        return sorted(root.glob("Scene*/*/frames/depth/Camera_0/depth_*.png"))

    @classmethod
    def depth_for_normals(cls, root: Path, path: Path) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        scene, variation = path.relative_to(root).parts[:2]
        depth, valid = read_depth(path)
        frame = int(path.stem.split("_")[1])
        K = frame_K(scene_intrinsics(root, scene, variation), frame, depth.shape, root / scene / variation)
        return depth, valid, K

    @classmethod
    def check(cls, root: Path, report: Report, settings: CheckSettings) -> None:
        variation = settings.options.get("variation", DEFAULT_VARIATION)
        partial_is_fine = is_toycity_copy(root)
        for scene in cls.official_counts:
            count = sum(1 for _ in frame_folder(root, scene, variation, "rgb").glob("rgb_*.jpg"))
            if count:
                count_note(report, cls, scene, count)
                if not (root / scene / variation / "intrinsic.txt").is_file():
                    report.note(f"note: {root / scene / variation / 'intrinsic.txt'} is absent; the release's "
                                f"constant camera is used ({cls.download_hint('intrinsics', root)} for per-frame "
                                "intrinsics)")
            elif not partial_is_fine:
                report.problem(f"{frame_folder(root, scene, variation, 'rgb')} has no rgb_*.jpg; "
                               f"{cls.download_hint('rgb', root)}")
        for split in ("train", "val"):
            dataset = build(report, cls, root, split, settings)
            if dataset is not None:
                decode_split(report, dataset, settings, _colours_outside_palette)


def _colours_outside_palette(dataset: VKITTI2Dataset, index: int, sample: Sample) -> str | None:
    """What share of a frame's class map has colours outside the palette (they are ignored in training)."""
    scene, frame = dataset.items[index]
    path = frame_path(dataset.root, scene, dataset.variation, "labels", frame)
    colors = read_png_unchanged(path, "Virtual KITTI 2 class map")
    unknown = decode_vkitti2_colors(colors) == 255
    if not unknown.any():
        return None
    odd = np.unique(colors[unknown].reshape(-1, 3), axis=0)[:4]
    listed = ", ".join(str(tuple(int(c) for c in rgb)) for rgb in odd)
    return (f"{path}: {unknown.mean() * 100:.1f} % of its pixels have colours outside the {len(VKITTI2_CLASSES)}-class "
            f"palette ({listed}); they are ignored in training and evaluation")
