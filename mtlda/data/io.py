"""Image, depth and array file access with errors that name the file and the fix.

Readers return numpy arrays at the file's resolution: colour images as (H, W, 3) uint8 **RGB** (OpenCV's BGR order
is undone here and nowhere else), single-channel PNGs with their stored dtype (uint8 or uint16). Writers encode in
memory and go through :func:`write_atomic`, the data layer's one atomic writer: a complete, fsynced temporary file
is renamed into place, so a crash leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np

from mtlda.data.errors import DatasetError
from mtlda.files import write_bytes_atomic


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else FileNotFoundError naming ``what`` (e.g. "Cityscapes disparity map")."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (check the data set root; scripts/check_data.py lists "
                                "what is missing)")
    return path


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    require_file(path, what)
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise DatasetError(f"cannot decode {what} {path}: the file is empty or corrupt; re-download or regenerate it")
    return image


def read_rgb(path: Path, what: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB of a colour image file (PNG or JPEG)."""
    image = _decode(path, cv2.IMREAD_COLOR, what)
    return np.ascontiguousarray(image[..., ::-1])


def read_png_unchanged(path: Path, what: str) -> np.ndarray:
    """A PNG exactly as stored: (H, W) or (H, W, C) with C in RGB(A) order, dtype uint8 or uint16."""
    image = _decode(path, cv2.IMREAD_UNCHANGED, what)
    if image.ndim == 3:
        image = image[..., [2, 1, 0, 3][: image.shape[2]]] if image.shape[2] in (3, 4) else image
    return np.ascontiguousarray(image)


def read_single_channel(path: Path, what: str, channel: int = 0) -> np.ndarray:
    """(H, W) channel ``channel`` (in the file's RGB order) of a grey or colour PNG, stored dtype."""
    image = read_png_unchanged(path, what)
    return image if image.ndim == 2 else np.ascontiguousarray(image[..., channel])


def read_npy(path: Path, what: str) -> np.ndarray:
    """The array of a ``.npy`` file."""
    require_file(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(f"cannot read {what} {path}: {err}; re-download or regenerate it") from err


def read_json(path: Path, what: str) -> dict:
    require_file(path, what)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot parse {what} {path}: {err}; re-download or regenerate it") from err


def read_text_lines(path: Path, what: str) -> list[str]:
    """Non-empty stripped lines of a text file."""
    require_file(path, what)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def write_atomic(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`mtlda.files.write_bytes_atomic`)."""
    write_bytes_atomic(path, payload)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_image(path: Path, image: np.ndarray) -> None:
    """Write (H, W) or (H, W, 3) RGB uint8/uint16 ``image`` atomically; the format follows the suffix (.png, .jpg)."""
    if image.ndim == 3:
        image = image[..., ::-1]
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix, np.ascontiguousarray(image), params)
    if not ok:
        raise ValueError(f"cannot encode {image.shape} {image.dtype} as {path.suffix} for {path}")
    write_atomic(path, encoded.tobytes())


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file atomically."""
    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomic(path, buffer.getvalue())


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) of a PNG from its header, without decoding the image."""
    require_file(path, "PNG image")
    with open(path, "rb") as f:
        header = f.read(24)
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        raise DatasetError(f"{path} is not a PNG file; re-download or regenerate it")
    return int.from_bytes(header[20:24], "big"), int.from_bytes(header[16:20], "big")
