"""Colour maps of dense maps for pictures (the panels are laid out by :mod:`mtlda.panel_layout`). Every function
returns float images (B, 3, H, W) in [0, 1] and never mutates its inputs.

Depth: :func:`colourise_depth` maps a fixed range, :func:`colourise_depth_robust` and :func:`colourise_depth_pair`
map each image's own robust range (log depth).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
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


# Viridis (dark blue -> green -> yellow), sampled at nine points: uncertainty (entropy) maps.
_VIRIDIS_ANCHORS = np.array(
    [
        [0.267, 0.005, 0.329],
        [0.279, 0.175, 0.483],
        [0.230, 0.322, 0.546],
        [0.173, 0.449, 0.558],
        [0.128, 0.567, 0.551],
        [0.158, 0.684, 0.502],
        [0.369, 0.789, 0.383],
        [0.678, 0.864, 0.190],
        [0.993, 0.906, 0.144],
    ],
    dtype=np.float32,
)
# Black -> red -> yellow -> white: error maps.
_HOT_ANCHORS = np.array(
    [[0.0, 0.0, 0.0], [0.6, 0.0, 0.0], [1.0, 0.35, 0.0], [1.0, 0.8, 0.1], [1.0, 1.0, 1.0]], dtype=np.float32
)

MAGMA_LUT = build_lut(_MAGMA_ANCHORS)
VIRIDIS_LUT = build_lut(_VIRIDIS_ANCHORS)
HOT_LUT = build_lut(_HOT_ANCHORS)

# Robust depth colouring: log depth between these percentiles of an image's valid pixels spans the colour map.
DEPTH_LOW_PERCENTILE = 2.0
DEPTH_HIGH_PERCENTILE = 98.0
# Error maps are scaled per image so that this percentile is the brightest colour.
ERROR_HIGH_PERCENTILE = 98.0
# Percentiles are estimated on at most this many pixels per image (a fixed stride, never a random draw).
_MAX_QUANTILE_SAMPLES = 1 << 18


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


def _per_image_quantiles(values: Tensor, usable: Tensor, quantiles: Sequence[float]) -> Tensor:
    """(B, Q) quantiles in [0, 1] of values (B, 1, H, W) over the ``usable`` (B, 1, H, W) pixels of each image; NaN
    for an image without usable pixels. Large images are subsampled on a fixed stride."""
    q = torch.tensor(list(quantiles), dtype=torch.float32, device=values.device)
    rows = []
    for image, keep in zip(values.float().flatten(1), usable.expand_as(values).flatten(1)):
        picked = image[keep]
        if picked.numel() > _MAX_QUANTILE_SAMPLES:
            picked = picked[:: -(-picked.numel() // _MAX_QUANTILE_SAMPLES)]
        rows.append(torch.quantile(picked, q) if picked.numel() else torch.full_like(q, float("nan")))
    return torch.stack(rows)


def robust_depth_bounds(
    depth: Tensor,
    valid: Tensor | None = None,
    low_percentile: float = DEPTH_LOW_PERCENTILE,
    high_percentile: float = DEPTH_HIGH_PERCENTILE,
) -> Tensor:
    """(B, 2) per-image [near, far] metres: the low and high percentiles of depth (B, 1, H, W) metres over its pixels
    that are > 0 and inside ``valid`` (B, 1, H, W) bool; a row is NaN when its image has no such pixel."""
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must have shape (B, 1, H, W), got {tuple(depth.shape)}")
    if not 0 <= low_percentile < high_percentile <= 100:
        raise ValueError(f"need 0 <= low_percentile < high_percentile <= 100, got {low_percentile}, {high_percentile}")
    usable = depth > 0 if valid is None else (depth > 0) & valid.bool()
    return _per_image_quantiles(depth, usable, (low_percentile / 100, high_percentile / 100))


def colourise_depth_per_image(depth: Tensor, bounds: Tensor) -> Tensor:
    """(B, 3, H, W) magma colours of depth (B, 1, H, W) metres, linear in log depth between the per-image (B, 2)
    ``bounds`` [near, far] metres (near brightest, far darkest, clamped): every doubling of distance gets an equal
    share of the map, so 20, 40 and 80 m differ where inverse depth would draw them all near black. Depth <= 0 is
    black. Rows with non-finite or non-positive bounds use [1, 100] m; an empty range is widened around its value.
    """
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must have shape (B, 1, H, W), got {tuple(depth.shape)}")
    if bounds.shape != (depth.shape[0], 2):
        raise ValueError(f"bounds must have shape ({depth.shape[0]}, 2), got {tuple(bounds.shape)}")
    bounds = bounds.float().to(depth.device)
    usable = (torch.isfinite(bounds) & (bounds > 0)).all(dim=1, keepdim=True)
    log_bounds = torch.where(usable, bounds, torch.tensor([1.0, 100.0], device=depth.device)).log()
    log_near, log_far = log_bounds[:, :1], log_bounds[:, 1:]
    empty = log_far - log_near < 1e-3
    log_near = torch.where(empty, log_near - math.log(2), log_near).reshape(-1, 1, 1, 1)
    log_far = torch.where(empty, log_far + math.log(2), log_far).reshape(-1, 1, 1, 1)
    valid = depth > 0
    log_depth = torch.where(valid, depth.float(), torch.ones_like(depth, dtype=torch.float32)).log()
    return apply_lut((log_far - log_depth) / (log_far - log_near)) * valid


def colourise_depth_robust(depth: Tensor, valid: Tensor | None = None) -> Tensor:
    """(B, 3, H, W) magma colours of depth (B, 1, H, W) metres over each image's own robust range (log depth between
    the ``DEPTH_LOW_PERCENTILE`` and ``DEPTH_HIGH_PERCENTILE`` percentiles of its valid pixels, see
    :func:`colourise_depth_per_image`); pixels <= 0 or outside ``valid`` (B, 1, H, W) are black. Invariant to the
    scale of the depth, so a prediction known up to scale (self-supervised) and its ground truth look alike."""
    shown = depth if valid is None else torch.where(valid.bool(), depth, torch.zeros_like(depth))
    return colourise_depth_per_image(shown, robust_depth_bounds(shown))


def colourise_depth_pair(pred: Tensor, target: Tensor, target_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Colours (B, 3, H, W) of a depth prediction and its target (B, 1, H, W) metres on one shared per-image range:
    the robust range of the target's valid pixels (the prediction's own where a target has none). Target pixels
    <= 0 or outside ``target_valid`` (B, 1, H, W) are black."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    shown = target if target_valid is None else torch.where(target_valid.bool(), target, torch.zeros_like(target))
    bounds = robust_depth_bounds(shown)
    bounds = torch.where(torch.isfinite(bounds), bounds, robust_depth_bounds(pred))
    return colourise_depth_per_image(pred, bounds), colourise_depth_per_image(shown, bounds)


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


def colourise_entropy(entropy: Tensor) -> Tensor:
    """(B, 3, H, W) viridis colours of normalised entropy: (B, C, H, W) terms in [0, 1] summed over C (a (B, 1, H, W)
    entropy map, or the per-class -p log p / log C maps a discriminator sees); 0 (certain) is dark blue."""
    if entropy.ndim != 4:
        raise ValueError(f"entropy must have shape (B, C, H, W), got {tuple(entropy.shape)}")
    return apply_lut(entropy.float().sum(dim=1, keepdim=True), VIRIDIS_LUT)


def colourise_error(error: Tensor, max_error: float | None = None) -> Tensor:
    """(B, 3, H, W) black-red-yellow-white colours of a non-negative error map (B, 1, H, W), e.g. a reprojection
    error; 0 is black, ``max_error`` and above white. With ``max_error=None`` each image is scaled by its own
    ``ERROR_HIGH_PERCENTILE`` percentile (pass a number to compare images). Non-finite values are black."""
    if error.ndim != 4 or error.shape[1] != 1:
        raise ValueError(f"error must have shape (B, 1, H, W), got {tuple(error.shape)}")
    if max_error is not None and not max_error > 0:
        raise ValueError(f"max_error must be positive, got {max_error}")
    finite = torch.isfinite(error)
    values = torch.where(finite, error.float(), torch.zeros_like(error, dtype=torch.float32))
    if max_error is None:
        top = _per_image_quantiles(values, finite, (ERROR_HIGH_PERCENTILE / 100,))[:, 0]
        top = torch.where(torch.isfinite(top) & (top > 0), top, torch.ones_like(top))
    else:
        top = torch.full((error.shape[0],), float(max_error), device=error.device)
    return apply_lut(values / top.reshape(-1, 1, 1, 1), HOT_LUT) * finite


def colourise_mask(
    mask: Tensor,
    on_colour: tuple[float, float, float] = (1.0, 1.0, 1.0),
    off_colour: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Tensor:
    """(B, 3, H, W) image of a binary mask (B, 1, H, W) (e.g. the auto-mask: True where a pixel joins the loss):
    ``on_colour`` where True, ``off_colour`` where False (RGB in [0, 1])."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape (B, 1, H, W), got {tuple(mask.shape)}")
    on = torch.tensor(on_colour, dtype=torch.float32, device=mask.device).reshape(1, 3, 1, 1)
    off = torch.tensor(off_colour, dtype=torch.float32, device=mask.device).reshape(1, 3, 1, 1)
    return torch.where(mask.bool(), on, off)
