"""Colour maps and image panels for TensorBoard. Every function returns float images in [0, 1] and never mutates
its inputs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlda.constants import IGNORE_INDEX

# Anchor colours of a magma-like perceptual map (black -> purple -> red -> orange -> pale yellow), written here
# and linearly interpolated to 256 entries.
_MAGMA_ANCHORS = np.array(
    [
        [0.001, 0.000, 0.014],
        [0.099, 0.063, 0.270],
        [0.316, 0.071, 0.485],
        [0.513, 0.147, 0.506],
        [0.716, 0.215, 0.475],
        [0.904, 0.320, 0.388],
        [0.986, 0.537, 0.382],
        [0.996, 0.762, 0.532],
        [0.987, 0.991, 0.750],
    ],
    dtype=np.float32,
)


def build_lut(anchors: np.ndarray, size: int = 256) -> np.ndarray:
    """(size, 3) float32 colour table linearly interpolated between (N, 3) anchor colours spaced evenly on [0, 1]."""
    if anchors.ndim != 2 or anchors.shape[1] != 3 or anchors.shape[0] < 2:
        raise ValueError(f"anchors must be (N >= 2, 3) colours, got shape {anchors.shape}")
    positions = np.linspace(0.0, 1.0, anchors.shape[0])
    samples = np.linspace(0.0, 1.0, size)
    return np.stack([np.interp(samples, positions, anchors[:, c]) for c in range(3)], axis=1).astype(np.float32)


MAGMA_LUT = build_lut(_MAGMA_ANCHORS)


def apply_lut(values: Tensor, lut: np.ndarray = MAGMA_LUT) -> Tensor:
    """(B, 3, H, W) colours of values (B, 1, H, W) in [0, 1] (clamped) looked up in an (N, 3) table."""
    if values.ndim != 4 or values.shape[1] != 1:
        raise ValueError(f"values must have shape (B, 1, H, W), got {tuple(values.shape)}")
    table = torch.as_tensor(lut, device=values.device)
    index = (values[:, 0].float().clamp(0, 1) * (len(lut) - 1)).round().long()
    return table[index].permute(0, 3, 1, 2)


def colourise_labels(labels: Tensor, palette: Tensor | np.ndarray) -> Tensor:
    """(B, 3, H, W) colours of class ids (B, H, W) with a (C, 3) uint8 palette; ignored or unknown ids are black."""
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape (B, H, W), got {tuple(labels.shape)}")
    table = torch.as_tensor(np.asarray(palette), device=labels.device).float() / 255.0
    if table.ndim != 2 or table.shape[1] != 3:
        raise ValueError(f"palette must have shape (C, 3), got {tuple(table.shape)}")
    table = torch.cat([table, table.new_zeros(1, 3)])
    index = labels.long()
    index = torch.where((index < 0) | (index >= len(table) - 1) | (index == IGNORE_INDEX), len(table) - 1, index)
    return table[index].permute(0, 3, 1, 2)


def colourise_depth(depth: Tensor, min_depth: float, max_depth: float) -> Tensor:
    """(B, 3, H, W) magma colours of depth (B, 1, H, W) metres; near is bright, far is dark, depth <= 0 is black.

    Colours are linear in inverse depth between 1/max_depth (darkest) and 1/min_depth (brightest).
    """
    if not 0 < min_depth < max_depth:
        raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
    valid = depth > 0
    inverse = 1.0 / torch.where(valid, depth, torch.ones_like(depth))
    t = (inverse - 1.0 / max_depth) / (1.0 / min_depth - 1.0 / max_depth)
    return apply_lut(t) * valid


def normals_to_rgb(normals: Tensor, valid: Tensor | None = None) -> Tensor:
    """(B, 3, H, W) colours (n + 1) / 2 of normals (B, 3, H, W); pixels outside ``valid`` (B, 1, H, W) are black."""
    if normals.ndim != 4 or normals.shape[1] != 3:
        raise ValueError(f"normals must have shape (B, 3, H, W), got {tuple(normals.shape)}")
    rgb = ((normals.float() + 1) / 2).clamp(0, 1)
    return rgb if valid is None else rgb * valid


def grey_to_rgb(values: Tensor) -> Tensor:
    """(B, 3, H, W) grey image of values (B, 1, H, W) in [0, 1] (clamped)."""
    if values.ndim != 4 or values.shape[1] != 1:
        raise ValueError(f"values must have shape (B, 1, H, W), got {tuple(values.shape)}")
    return values.float().clamp(0, 1).expand(-1, 3, -1, -1)


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
