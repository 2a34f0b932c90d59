"""Precomputed surface-normal files (written by ``scripts/prepare_normals.py``, read by the loaders).

A normal map is a 16-bit 3-channel PNG holding (x, y, z) in the file's R, G, B channels, camera-facing, in the
camera frame of the project (x right, y down, z forward). Each component n in [-1, 1] is stored as
``round((n + 1) / 2 * 65534) + 1`` (1..65535, quantisation step 3.05e-5); 0 in all three channels marks an invalid
pixel, so the validity mask travels inside the file.

The file of a depth source ``<root>/<rel>`` is ``<normals_root>/normals_mtlda/<rel>`` with the suffix ``.png``, at the
depth file's resolution. ``normals_root`` is the data set root unless the maps were written elsewhere
(``scripts/prepare_normals.py --out DIR`` for a read-only data set; loaders take ``normals_root=DIR``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlda.data.io import DatasetError, read_png_unchanged, write_image

NORMALS_DIR = "normals_mtlda"
_LEVELS = 65534


def normals_path(root: Path, depth_file: Path, normals_root: Path | None = None) -> Path:
    """Where the precomputed normals of ``depth_file`` (a path under the data set ``root``) live, under
    ``normals_root`` (None: ``root``)."""
    return (normals_root or root) / NORMALS_DIR / depth_file.relative_to(root).with_suffix(".png")


def encode_normals(normals: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint16 file values of unit normals (H, W, 3) float and a validity mask (H, W) bool."""
    if normals.ndim != 3 or normals.shape[2] != 3 or valid.shape != normals.shape[:2]:
        raise ValueError(f"expected normals (H, W, 3) and valid (H, W), got {normals.shape} and {valid.shape}")
    codes = np.rint((np.clip(normals, -1.0, 1.0) + 1.0) / 2.0 * _LEVELS).astype(np.uint16) + 1
    return np.where(valid[..., None], codes, 0).astype(np.uint16)


def decode_normals(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normals (H, W, 3) float32 unit, zero where invalid; valid (H, W) bool) of file values (H, W, 3) uint16."""
    valid = (codes != 0).any(axis=-1)
    normals = (codes.astype(np.float32) - 1.0) / _LEVELS * 2.0 - 1.0
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    normals = np.where(valid[..., None], normals / np.maximum(length, 1e-6), 0.0).astype(np.float32)
    return normals, valid


def write_normals(path: Path, normals: np.ndarray, valid: np.ndarray) -> None:
    """Write a normal map atomically (temporary file + rename), creating folders."""
    write_image(path, encode_normals(normals, valid))


def read_normals(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(normals (H, W, 3) float32, valid (H, W) bool) of a precomputed normals PNG."""
    codes = read_png_unchanged(path, "precomputed normal map")
    if codes.ndim != 3 or codes.shape[2] != 3 or codes.dtype != np.uint16:
        raise DatasetError(
            f"{path} is not a 16-bit 3-channel normal map ({codes.shape} {codes.dtype}); delete it and rerun "
            "scripts/prepare_normals.py"
        )
    return decode_normals(codes)
