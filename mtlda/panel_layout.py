"""Image panels: :func:`make_panel` is the bare grid; :func:`labelled_panel` adds column titles, row labels and a
class legend drawn into the image (OpenCV Hershey font, ASCII text); :func:`stack_panels` stacks such panels under
section headings (e.g. the "source" and "target" rows of a UDA panel); :func:`write_picture` saves one as PNG.
Panels are float (3, H, W) images in [0, 1] on white.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlda.data.io import write_image


def make_panel(images: list[Tensor], pad: int = 2) -> Tensor:
    """(3, H', W') grid with one row per batch item and one column per (B, 3, H, W) image of ``images``.

    Images are resized (bilinear) to the size of the first one; cells are separated by ``pad`` white pixels.
    """
    if not images:
        raise ValueError("make_panel needs at least one image")
    b, _, h, w = images[0].shape
    columns = []
    for img in images:
        if img.ndim != 4 or img.shape[:2] != (b, 3):
            raise ValueError(f"every image must be (B={b}, 3, H, W), got {tuple(img.shape)}")
        img = img.detach().float().to(images[0].device)
        if img.shape[-2:] != (h, w):
            img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
        columns.append(F.pad(img.clamp(0, 1), (pad, pad, pad, pad), value=1.0))
    rows = torch.cat(columns, dim=3)  # (B, 3, h + 2 pad, n (w + 2 pad))
    return torch.cat(list(rows), dim=1)


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_RGB = (25, 25, 25)
_TEXT_MARGIN = 3
_MIN_FONT_SCALE = 0.3
_SWATCH_BORDER_RGB = (90, 90, 90)


def font_scale_for(width: int) -> float:
    """OpenCV font scale for labels of an image cell ``width`` pixels wide: 0.45 at 256 px, within [0.4, 1.2]."""
    return float(np.clip(0.45 * width / 256, 0.4, 1.2))


def _thickness(scale: float) -> int:
    return 1 if scale < 0.8 else 2


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _text_size(text: str, scale: float) -> tuple[int, int, int]:
    (width, height), baseline = cv2.getTextSize(text, _FONT, scale, _thickness(scale))
    return width, height, baseline


def text_height(scale: float) -> int:
    """Height in pixels of one line of text at ``scale`` with its margins (the height of a title strip)."""
    _, height, baseline = _text_size("Ag", scale)
    return height + baseline + 2 * _TEXT_MARGIN


def _fit_text(text: str, width: int, scale: float) -> tuple[str, float]:
    """The text and scale that fit ``width`` pixels: shrunk down to ``_MIN_FONT_SCALE``, then cut with '...'."""
    text = _ascii(text)
    room = width - 2 * _TEXT_MARGIN
    text_width = _text_size(text, scale)[0]
    if text_width <= room:
        return text, scale
    scale = max(_MIN_FONT_SCALE, scale * room / text_width)
    while text and _text_size(text, scale)[0] > room:
        text = text[:-4] + "..." if len(text) > 4 else text[:-1]
    return text, scale


def _to_tensor(canvas: np.ndarray) -> Tensor:
    return torch.from_numpy(canvas).permute(2, 0, 1).float() / 255.0


def text_strip(text: str, width: int, scale: float, height: int | None = None, align: str = "centre") -> Tensor:
    """(3, height, width) image in [0, 1]: dark text on white, vertically centred, aligned "centre" or "left";
    ``height`` defaults to :func:`text_height` of ``scale``. Text too wide is shrunk, then cut with '...'."""
    if align not in ("centre", "left"):
        raise ValueError(f"align must be 'centre' or 'left', got {align!r}")
    height = text_height(scale) if height is None else height
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    text, fitted = _fit_text(text, width, scale)
    if text:
        text_width, text_h, _ = _text_size(text, fitted)
        x = (width - text_width) // 2 if align == "centre" else _TEXT_MARGIN
        y = (height + text_h) // 2
        cv2.putText(canvas, text, (x, y), _FONT, fitted, _TEXT_RGB, _thickness(fitted), cv2.LINE_AA)
    return _to_tensor(canvas)


def class_legend(class_names: Sequence[str], palette: Tensor | np.ndarray, width: int, scale: float = 0.45) -> Tensor:
    """(3, H, width) legend strip in [0, 1]: a colour swatch and the name of each class, flowing left to right over
    as many lines as ``width`` needs; ``palette`` is (C, 3) uint8 RGB for the C class names."""
    colours = np.asarray(palette)
    if colours.shape != (len(class_names), 3):
        raise ValueError(f"palette must have shape ({len(class_names)}, 3), got {colours.shape}")
    line = text_height(scale)
    swatch = line - 2 * _TEXT_MARGIN
    spacing = 3 * _TEXT_MARGIN
    items, x, y = [], _TEXT_MARGIN, 0
    for name, colour in zip(class_names, colours):
        name, fitted = _fit_text(name, width - swatch - 2 * _TEXT_MARGIN, scale)
        item_width = swatch + _TEXT_MARGIN + _text_size(name, fitted)[0]
        if x > _TEXT_MARGIN and x + item_width > width - _TEXT_MARGIN:
            x, y = _TEXT_MARGIN, y + line
        items.append((x, y, name, fitted, colour))
        x += item_width + spacing
    canvas = np.full((y + line, width, 3), 255, dtype=np.uint8)
    for x, y, name, fitted, colour in items:
        top = y + _TEXT_MARGIN
        cv2.rectangle(canvas, (x, top), (x + swatch - 1, top + swatch - 1), tuple(int(c) for c in colour), -1)
        cv2.rectangle(canvas, (x, top), (x + swatch - 1, top + swatch - 1), _SWATCH_BORDER_RGB, 1)
        text_h = _text_size(name, fitted)[1]
        cv2.putText(canvas, name, (x + swatch + _TEXT_MARGIN, y + (line + text_h) // 2), _FONT, fitted, _TEXT_RGB,
                    _thickness(fitted), cv2.LINE_AA)
    return _to_tensor(canvas)


def labelled_panel(
    images: Sequence[Tensor],
    titles: Sequence[str],
    row_labels: Sequence[str] | None = None,
    legend: tuple[Sequence[str], Tensor | np.ndarray] | None = None,
    pad: int = 2,
) -> Tensor:
    """(3, H', W') :func:`make_panel` grid of (B, 3, H, W) images (one column each, one row per batch item) with a
    title above each column, an optional label left of each row (B labels) and an optional class legend strip
    ``(class_names, (C, 3) uint8 palette)`` below, on white.

    H' = text_height + B (H + 2 pad) [+ legend height]; W' = [label width +] n (W + 2 pad).
    """
    if len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} image columns")
    grid = make_panel(list(images), pad)
    b, _, h, w = images[0].shape
    if row_labels is not None and len(row_labels) != b:
        raise ValueError(f"got {len(row_labels)} row labels for {b} rows")
    scale = font_scale_for(w)
    header = torch.cat([text_strip(t, w + 2 * pad, scale) for t in titles], dim=2)
    panel = torch.cat([header.to(grid.device), grid], dim=1)
    if row_labels is not None:
        label_width = max(_text_size(_ascii(label), scale)[0] for label in row_labels) + 2 * _TEXT_MARGIN
        column = [torch.ones(3, header.shape[1], label_width)]
        column += [text_strip(label, label_width, scale, height=h + 2 * pad, align="left") for label in row_labels]
        panel = torch.cat([torch.cat(column, dim=1).to(grid.device), panel], dim=2)
    if legend is not None:
        names, palette = legend
        strip = class_legend(names, palette, panel.shape[-1], scale)
        panel = torch.cat([panel, strip.to(grid.device)], dim=1)
    return panel


def stack_panels(sections: Sequence[tuple[str, Tensor]], gap: int = 4, scale: float = 0.5) -> Tensor:
    """(3, H', W') image stacking (3, H, W) panels top to bottom, each under its heading (left-aligned; none for
    ""), ``gap`` white rows apart; narrower panels are padded with white on the right to the widest."""
    if not sections:
        raise ValueError("stack_panels needs at least one section")
    width = max(panel.shape[-1] for _, panel in sections)
    device = sections[0][1].device
    parts = []
    for index, (heading, panel) in enumerate(sections):
        if panel.ndim != 3 or panel.shape[0] != 3:
            raise ValueError(f"every panel must be (3, H, W), got {tuple(panel.shape)}")
        if index:
            parts.append(torch.ones(3, gap, width, device=device))
        if heading:
            parts.append(text_strip(heading, width, scale, align="left").to(device))
        parts.append(F.pad(panel.float().to(device), (0, width - panel.shape[-1]), value=1.0))
    return torch.cat(parts, dim=1)


def to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] RGB -> (H, W, 3) uint8 RGB."""
    return (image.detach().clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()


def write_picture(path: Path, image: Tensor) -> None:
    """Write a (3, H, W) float [0, 1] picture as an 8-bit PNG (atomically)."""
    write_image(path, to_uint8(image))
