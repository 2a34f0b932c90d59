"""Write toycity scenes in the on-disk formats of the real data sets, and cache them.

:func:`export_toycity` renders ``num_train`` + ``num_val`` scenes (validation scenes use indices offset by
:data:`VAL_INDEX_OFFSET`, so they never repeat a training scene) and writes them exactly as the real release of the
chosen format stores its files, so that the real loader reads them:

* ``cityscapes``: ``leftImg8bit/<split>/<city>/<city>_<nnnnnn>_000019_leftImg8bit.png``, ``gtFine/..._gtFine_labelIds
  .png`` (Cityscapes label ids), ``disparity/..._disparity.png`` (p = round(d * 256) + 1 with d = baseline * fx /
  depth pixels, 0 = invalid), ``camera/..._camera.json`` (baseline 0.209313 m, toycity fx/fy/u0/v0, the camera's
  height, yaw, pitch and roll in the street frame) and, on request, ``leftImg8bit_sequence`` with frames 18, 19, 20
  (offsets -1, 0, +1). Cities: ``toytown`` (train), ``toyville`` (val).
* ``synthia``: ``RGB/<7d>.png``, ``GT/LABELS/<7d>.png`` (16-bit, class in R, instance 0 in G),
  ``Depth/Depth/<7d>.png`` (16-bit centimetres in all three channels, 0 = invalid). Training scenes are written as
  indices 0.., validation scenes from the first index of the packaged val split (7520), so the fixed split files
  select them. ``mtlda_intrinsics.json`` declares toycity's camera.
* ``vkitti2``: ``Scene02/clone`` (train, the first scene of the train split) and ``Scene01/clone`` (val):
  ``frames/rgb/Camera_0/rgb_<5d>.jpg``, ``frames/classSegmentation/Camera_0/classgt_<5d>.png`` (colours),
  ``frames/depth/Camera_0/depth_<5d>.png`` (uint16 cm, 65535 = invalid), ``intrinsic.txt`` and ``extrinsic.txt``
  (both cameras; Camera_1 is 0.532725 m to the right).
* ``nyudv2``: ``images/<n>.png``, ``segmentation/<n>.png``, ``depth/<n>.npy`` (metres), ``normals/<n>.png``
  (the file axes of :mod:`mtlda.data.nyudv2`), ``edge/<n>.png`` (0/255), ``gt_sets/{train,val}.txt``,
  ``mtlda_intrinsics.json``.

Toycity classes are stored as the native ids of :data:`mtlda.data.labels.TOYCITY_NATIVE_IDS`; the loaders'
"toycity" class sets map them back (VKITTI2 has no sidewalk or person: they become Terrain and Misc).

:func:`ensure_toycity` writes into a temporary folder and renames it into
``<cache_dir>/<format>_<style>_<h>x<w>_<train>-<val>_s<seed>_v<GENERATOR_VERSION>`` once complete, so a new
generator version regenerates and an interrupted run leaves nothing half-written behind.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mtlda.config import substitute_variables
from mtlda.data import nyudv2, synthia
from mtlda.data.base import INTRINSICS_FILE, TOYCITY_METADATA_FILE
from mtlda.data.cityscapes import neighbour_path, sample_path
from mtlda.data.io import write_image, write_json, write_npy, write_text_atomic
from mtlda.data.labels import TOYCITY_NATIVE_IDS, encode_vkitti2_colors
from mtlda.data.toycity import CAMERA_HEIGHT, GENERATOR_VERSION, STYLES, Frame, camera_matrix, render_sample
from mtlda.data.vkitti2 import CM_PER_M as VKITTI2_CM_PER_M
from mtlda.data.vkitti2 import DEPTH_INVALID, frame_path, split_scenes
from mtlda.schema import ToycityConfig

FORMATS = ("cityscapes", "synthia", "vkitti2", "nyudv2")
SEQUENCE_FORMATS = ("cityscapes",)  # formats toycity writes neighbour frames in
VAL_INDEX_OFFSET = 1_000_000
CITYSCAPES_BASELINE = 0.209313  # metres, the Cityscapes stereo rig
CITYSCAPES_FRAME = 19  # annotated frame number of a Cityscapes snippet
CITYSCAPES_CITIES = {"train": "toytown", "val": "toyville"}
VKITTI2_BASELINE = 0.532725  # metres between Camera_0 and Camera_1
METADATA_FILE = TOYCITY_METADATA_FILE
SEQUENCE_OFFSETS = (-1, 1)


def _native(fmt: str, labels: np.ndarray) -> np.ndarray:
    return np.asarray(TOYCITY_NATIVE_IDS[fmt], dtype=np.int64)[labels]


def cityscapes_disparity(depth: np.ndarray, valid: np.ndarray, fx: float) -> np.ndarray:
    """(H, W) uint16 Cityscapes disparity PNG values of depth (H, W) metres: round(d * 256) + 1, 0 = invalid."""
    disparity = np.where(valid, CITYSCAPES_BASELINE * fx / np.maximum(depth, 1e-6), 0.0)
    codes = np.clip(np.rint(disparity * 256.0) + 1.0, 2, 65535)
    return np.where(valid, codes, 0).astype(np.uint16)


def _street_angles(cam_to_world: np.ndarray) -> dict[str, float]:
    """Camera position (metres) and yaw, pitch, roll (radians) in Cityscapes' vehicle frame (x forward, y left,
    z up, origin on the road below the camera; right-handed angles: yaw left +, pitch nose down +, roll right side
    down +), from a toycity pose (world X right, Y forward, Z up)."""
    right, down, forward = cam_to_world[:3, 0], cam_to_world[:3, 1], cam_to_world[:3, 2]
    return {
        "x": 0.0,
        "y": 0.0,
        "z": float(cam_to_world[2, 3]),
        "yaw": float(math.atan2(-forward[0], forward[1])),
        "pitch": float(math.asin(float(np.clip(-forward[2], -1, 1)))),
        "roll": float(math.atan2(-right[2], -down[2])),
    }


def _write_cityscapes(root: Path, split: str, i: int, frames: dict[int, Frame]) -> None:
    city = CITYSCAPES_CITIES[split]
    stem = f"{city}_{i:06d}_{CITYSCAPES_FRAME:06d}"
    f = frames[0]
    write_image(sample_path(root, "leftImg8bit", split, city, stem), f.rgb)
    write_image(sample_path(root, "gtFine", split, city, stem), _native("cityscapes", f.labels).astype(np.uint8))
    write_image(sample_path(root, "disparity", split, city, stem), cityscapes_disparity(f.depth, f.valid, f.K[0, 0]))
    write_json(sample_path(root, "camera", split, city, stem), {
        "extrinsic": {"baseline": CITYSCAPES_BASELINE, **_street_angles(f.cam_to_world)},
        "intrinsic": {"fx": float(f.K[0, 0]), "fy": float(f.K[1, 1]), "u0": float(f.K[0, 2]), "v0": float(f.K[1, 2])},
    })


def _write_synthia(root: Path, split: str, i: int, frames: dict[int, Frame]) -> None:
    name = f"{i if split == 'train' else int(synthia.split_names('val')[0]) + i:07d}"
    f = frames[0]
    write_image(synthia.sample_path(root, "rgb", name), f.rgb)
    labels = np.zeros((*f.labels.shape, 3), dtype=np.uint16)
    labels[..., 0] = _native("synthia", f.labels)
    write_image(synthia.sample_path(root, "labels", name), labels)
    cm = np.where(f.valid, np.clip(np.rint(f.depth * synthia.CM_PER_M), 1, 65535), 0).astype(np.uint16)
    write_image(synthia.sample_path(root, "depth", name), np.repeat(cm[..., None], 3, axis=2))


def _vkitti2_scene(split: str) -> str:
    return split_scenes(split)[0]


def _write_vkitti2(root: Path, split: str, i: int, frames: dict[int, Frame]) -> None:
    scene, f = _vkitti2_scene(split), frames[0]
    write_image(frame_path(root, scene, "clone", "rgb", i), f.rgb)
    write_image(frame_path(root, scene, "clone", "labels", i), encode_vkitti2_colors(_native("vkitti2", f.labels)))
    cm = np.clip(np.rint(f.depth * VKITTI2_CM_PER_M), 1, DEPTH_INVALID - 1)
    cm = np.where(f.valid, cm, DEPTH_INVALID).astype(np.uint16)
    write_image(frame_path(root, scene, "clone", "depth", i), cm)


def _vkitti2_text_files(root: Path, split: str, cameras: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """intrinsic.txt and extrinsic.txt (world-to-camera 4x4, row-major) of both cameras for every frame."""
    intrinsic = ["frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"]
    extrinsic = ["frame cameraID r1,1 r1,2 r1,3 t1 r2,1 r2,2 r2,3 t2 r3,1 r3,2 r3,3 t3 0 0 0 1"]
    for frame, (K, cam_to_world) in enumerate(cameras):
        for camera in (0, 1):
            to_right = np.eye(4)
            to_right[0, 3] = -VKITTI2_BASELINE * camera
            world_to_cam = to_right @ np.linalg.inv(cam_to_world)
            intrinsic.append(f"{frame} {camera} {K[0, 0]:.6f} {K[1, 1]:.6f} {K[0, 2]:.6f} {K[1, 2]:.6f}")
            extrinsic.append(f"{frame} {camera} " + " ".join(f"{v:.6f}" for v in world_to_cam.reshape(-1)))
    folder = root / _vkitti2_scene(split) / "clone"
    write_text_atomic(folder / "intrinsic.txt", "\n".join(intrinsic) + "\n")
    write_text_atomic(folder / "extrinsic.txt", "\n".join(extrinsic) + "\n")


def _nyudv2_name(split: str, i: int, num_train: int) -> str:
    return f"{i if split == 'train' else num_train + i:06d}"


def _write_nyudv2(root: Path, split: str, name: str, frames: dict[int, Frame]) -> None:
    f = frames[0]
    write_image(root / "images" / f"{name}.png", f.rgb)
    write_image(root / "segmentation" / f"{name}.png", _native("nyudv2", f.labels).astype(np.uint8))
    write_npy(root / "depth" / f"{name}.npy", f.depth.astype(np.float32))
    normals = np.where(f.valid[..., None], nyudv2.encode_normals(f.normals), 0).astype(np.uint8)
    write_image(root / "normals" / f"{name}.png", normals)
    write_image(root / "edge" / f"{name}.png", (f.edges > 0).astype(np.uint8) * 255)


def _intrinsics_json(K: np.ndarray, height: int, width: int) -> dict:
    return {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "width": width, "height": height}


def export_toycity(root: Path, fmt: str, *, style: str = "flat", height: int = 128, width: int = 256,
                   num_train: int = 240, num_val: int = 60, seed: int = 0, with_sequences: bool = False) -> None:
    """Render and write toycity in format ``fmt`` into the folder ``root`` (created; must not hold a data set).

    ``with_sequences`` (cityscapes only) also writes ``leftImg8bit_sequence`` (:func:`export_cityscapes_sequences`).
    """
    _check(fmt, style, num_train, num_val)
    if with_sequences and fmt not in SEQUENCE_FORMATS:
        raise ValueError("toycity writes neighbour frames in the cityscapes format only; set data.toycity.format "
                         "to cityscapes for data.frames")
    root.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Callable[[Path, str, int, dict[int, Frame]], None]] = {
        "cityscapes": _write_cityscapes, "synthia": _write_synthia, "vkitti2": _write_vkitti2,
        "nyudv2": lambda r, split, i, frames: _write_nyudv2(r, split, _nyudv2_name(split, i, num_train), frames),
    }
    splits = (("train", num_train, 0), ("val", num_val, VAL_INDEX_OFFSET))
    with tqdm(total=num_train + num_val, desc=f"toycity {fmt} {style}", unit="img") as bar:
        for split, count, first_index in splits:
            cameras = []
            for i in range(count):
                frames = render_sample(first_index + i, style=style, height=height, width=width, seed=seed)
                writers[fmt](root, split, i, frames)
                cameras.append((frames[0].K, frames[0].cam_to_world))
                bar.update()
            if fmt == "vkitti2" and count:
                _vkitti2_text_files(root, split, cameras)
    if fmt == "nyudv2":
        for split, count, _ in splits:
            names = [_nyudv2_name(split, i, num_train) + "\n" for i in range(count)]
            write_text_atomic(root / "gt_sets" / f"{split}.txt", "".join(names))
    K = camera_matrix(height, width)
    if fmt in ("synthia", "nyudv2"):
        write_json(root / INTRINSICS_FILE, _intrinsics_json(K, height, width))
    if with_sequences:
        export_cityscapes_sequences(root, style=style, height=height, width=width, num_train=num_train,
                                    num_val=num_val, seed=seed)
    write_json(root / METADATA_FILE, {
        "generator_version": GENERATOR_VERSION, "format": fmt, "style": style, "height": height, "width": width,
        "num_train": num_train, "num_val": num_val, "seed": seed, "val_index_offset": VAL_INDEX_OFFSET,
        "camera_height": CAMERA_HEIGHT, "intrinsics": _intrinsics_json(K, height, width),
    })


def export_cityscapes_sequences(root: Path, *, style: str, height: int, width: int, num_train: int, num_val: int,
                                seed: int) -> None:
    """Write ``leftImg8bit_sequence`` (frames -1, 0, +1 of every sample) of a toycity Cityscapes folder ``root``.

    Rendered into a temporary folder inside ``root`` and renamed into place when complete.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".sequence-", dir=root))
    try:
        with tqdm(total=num_train + num_val, desc=f"toycity sequences {style}", unit="img") as bar:
            for split, count, first_index in (("train", num_train, 0), ("val", num_val, VAL_INDEX_OFFSET)):
                city = CITYSCAPES_CITIES[split]
                for i in range(count):
                    stem = f"{city}_{i:06d}_{CITYSCAPES_FRAME:06d}"
                    frames = render_sample(first_index + i, style=style, height=height, width=width, seed=seed,
                                           offsets=SEQUENCE_OFFSETS)
                    for offset, frame in frames.items():
                        write_image(neighbour_path(tmp, split, city, stem, offset), frame.rgb)
                    centre = neighbour_path(tmp, split, city, stem, 0)
                    shutil.copyfile(sample_path(root, "leftImg8bit", split, city, stem), centre)
                    bar.update()
        os.rename(tmp / "leftImg8bit_sequence", root / "leftImg8bit_sequence")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(fmt: str, style: str, num_train: int, num_val: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown toycity format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if style not in STYLES:
        raise ValueError(f"unknown toycity style {style!r}; choose one of {', '.join(STYLES)}")
    if num_train < 1 or num_val < 0:
        raise ValueError(f"toycity needs num_train >= 1 and num_val >= 0, got {num_train} and {num_val}")
    if fmt == "synthia":
        first_val = int(synthia.split_names("val")[0])
        if num_train > first_val or num_val > len(synthia.split_names("val")):
            raise ValueError(f"the synthia format holds at most {first_val} training and "
                             f"{len(synthia.split_names('val'))} validation toycity scenes")


def toycity_domain(cfg: ToycityConfig) -> str:
    """The domain of a toycity configuration, whatever its scenes: ``toycity-<style>``, plus ``-<format>`` for
    formats other than cityscapes."""
    return f"toycity-{cfg.style}" + ("" if cfg.format == "cityscapes" else f"-{cfg.format}")


def toycity_name(cfg: ToycityConfig) -> str:
    """The data set name of a toycity configuration in results and references: its :func:`toycity_domain` and
    what changes its validation scenes when not the default: ``-s<seed>``, ``-<n>val`` (runs and references on
    other scenes are never compared)."""
    name = toycity_domain(cfg)
    if cfg.seed != ToycityConfig.seed:
        name += f"-s{cfg.seed}"
    if cfg.num_val != ToycityConfig.num_val:
        name += f"-{cfg.num_val}val"
    return name


def cache_folder(cfg: ToycityConfig) -> Path:
    """The cache folder of a toycity configuration (``cache_dir`` with ``${VAR:-default}`` and ``~`` expanded)."""
    cache_dir = substitute_variables({"cache_dir": cfg.cache_dir}, {})["cache_dir"]
    key = (f"{cfg.format}_{cfg.style}_{cfg.height}x{cfg.width}_{cfg.num_train}-{cfg.num_val}_s{cfg.seed}"
           f"_v{GENERATOR_VERSION}")
    return Path(os.path.expanduser(cache_dir)) / key


def ensure_toycity(cfg: ToycityConfig, with_sequences: bool = False) -> Path:
    """The root of the toycity data set described by ``cfg``, generated on first use (see the module docstring).

    ``with_sequences`` adds the Cityscapes sequence frames to a cached folder that lacks them.
    """
    _check(cfg.format, cfg.style, cfg.num_train, cfg.num_val)
    final = cache_folder(cfg)
    options = dict(style=cfg.style, height=cfg.height, width=cfg.width, num_train=cfg.num_train,
                   num_val=cfg.num_val, seed=cfg.seed)
    if not (final / METADATA_FILE).is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            export_toycity(tmp, cfg.format, with_sequences=with_sequences, **options)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / METADATA_FILE).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if with_sequences and not (final / "leftImg8bit_sequence").is_dir():
        try:
            export_cityscapes_sequences(final, **options)
        except OSError:
            if not (final / "leftImg8bit_sequence").is_dir():
                raise
    return final
