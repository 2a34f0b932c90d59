"""toycity frames: :func:`render_sample` renders the frames of one scene index as :class:`Frame` arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mtlda.data.toycity.raycast import Hits, camera_matrix, camera_pose, camera_rays, cast_rays, supersampled_camera
from mtlda.data.toycity.scene import MAX_ABS_OFFSET, MAX_DEPTH, SKY, Scene, street_layout
from mtlda.data.toycity.shading import camera_response, shade_flat, shade_synthetic, shade_textured, shade_tinted

GENERATOR_VERSION = "3"

STYLES = ("flat", "tinted", "synthetic", "textured")

# Rays per pixel side. The textured style is a camera: each pixel averages the radiance of a 3x3 grid of rays over
# its footprint (a box filter, before the camera's response and noise), so that texture finer than a pixel blurs
# to its mean as through a lens, instead of aliasing into noise that changes from frame to frame. flat and tinted
# have no texture and keep one ray per pixel, a simple renderer's look; synthetic keeps one ray per pixel with
# textures, a game engine without antialiasing (its aliasing is part of the gap to the textured camera). The grid's
# centre ray is the pixel centre: depth, labels and normals are exact at pixel centres in every style.
PIXEL_SAMPLES = {"flat": 1, "tinted": 1, "synthetic": 1, "textured": 3}


@dataclass
class Frame:
    """One rendered frame: image, exact targets and camera."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 where invalid
    valid: np.ndarray  # (H, W) bool
    labels: np.ndarray  # (H, W) uint8 toycity ids
    normals: np.ndarray  # (H, W, 3) float32 unit, camera-facing; zeros where invalid
    edges: np.ndarray  # (H, W) uint8 {0,1}
    K: np.ndarray  # (3, 3) float64
    cam_to_world: np.ndarray  # (4, 4) float64


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """(H, W) uint8: 1 on the pixel left of / above every change of label (1-px semantic boundaries)."""
    edges = np.zeros(labels.shape, dtype=bool)
    horizontal = labels[:, :-1] != labels[:, 1:]
    vertical = labels[:-1, :] != labels[1:, :]
    edges[:, :-1] |= horizontal
    edges[:-1, :] |= vertical
    return edges.astype(np.uint8)


def _pixel_centres(samples: int) -> tuple[slice, slice]:
    """Index of the centre rays of ``samples`` x ``samples`` ray grids (one grid per pixel) in a ray array."""
    return slice(samples // 2, None, samples), slice(samples // 2, None, samples)


def _footprint_mean(values: np.ndarray, samples: int) -> np.ndarray:
    """(H, W, C) means of the ``samples`` x ``samples`` blocks of (samples H, samples W, C) ray values."""
    h, w = values.shape[0] // samples, values.shape[1] // samples
    return values.reshape(h, samples, w, samples, -1).mean((1, 3))


def _render_frame(scene: Scene, style: str, pose: np.ndarray, K: np.ndarray, rays_cam: np.ndarray,
                  noise_rng: np.random.Generator) -> Frame:
    """The frame seen from ``pose`` (4, 4) cam_to_world with intrinsics ``K`` through the ray grid ``rays_cam``
    (:func:`camera_rays` with the style's ``PIXEL_SAMPLES``); ``noise_rng`` draws the textured style's noise."""
    samples = PIXEL_SAMPLES[style]
    ray_hits = cast_rays(scene, pose, supersampled_camera(K, samples), rays_cam)
    ray_labels = np.where(ray_hits.prim >= 0, scene.labels[np.maximum(ray_hits.prim, 0)], SKY).astype(np.uint8)
    if style == "flat":
        radiance = shade_flat(ray_labels, ray_hits)
    elif style == "tinted":
        radiance = shade_tinted(scene, ray_hits)
    elif style == "synthetic":
        radiance = shade_synthetic(scene, ray_labels, ray_hits, pose, rays_cam)
    else:
        radiance = shade_textured(scene, ray_labels, ray_hits, pose, rays_cam)
    rgb = _footprint_mean(radiance, samples)
    if style == "textured":
        rgb = camera_response(scene, rgb, noise_rng)
    centre = _pixel_centres(samples)
    hits = Hits(depth=ray_hits.depth[centre], normal=ray_hits.normal[centre], prim=ray_hits.prim[centre])
    labels = ray_labels[centre]
    valid = (hits.prim >= 0) & (hits.depth <= MAX_DEPTH)
    normals = np.where(valid[..., None], hits.normal @ pose[:3, :3], 0.0)
    return Frame(
        rgb=np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8),
        depth=np.where(valid, hits.depth, 0.0).astype(np.float32),
        valid=valid,
        labels=labels,
        normals=normals.astype(np.float32),
        edges=_label_edges(labels),
        K=K.copy(),
        cam_to_world=pose,
    )


def _check_arguments(index: int, style: str, height: int, width: int, seed: int, offsets: Sequence[int]) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown toycity style {style!r}; valid styles are {', '.join(STYLES)}")
    for name, value, low in (("index", index, 0), ("seed", seed, 0), ("height", height, 8), ("width", width, 8)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"toycity {name} must be an integer >= {low}, got {value!r}")
    if len(offsets) == 0:
        raise ValueError("toycity offsets must name at least one frame offset, e.g. (0,) or (-1, 0, 1)")
    for off in offsets:
        if not isinstance(off, (int, np.integer)) or abs(off) > MAX_ABS_OFFSET:
            raise ValueError(f"toycity frame offsets must be integers in [-{MAX_ABS_OFFSET}, {MAX_ABS_OFFSET}], "
                             f"got {off!r}")


def render_sample(index: int, *, style: str = "flat", height: int = 128, width: int = 256, seed: int = 0,
                  offsets: Sequence[int] = (0,)) -> dict[int, Frame]:
    """Render the frames at ``offsets`` (camera ~``step`` metres forward per unit offset) of street scene
    ``index``. Deterministic: the same arguments give identical arrays; frame ``k`` does not depend on which
    other offsets are requested, and all styles share geometry, depth, labels, normals and edges exactly."""
    _check_arguments(index, style, height, width, seed, offsets)
    scene = street_layout(np.random.default_rng([seed, index]))
    K = camera_matrix(height, width)
    rays_cam = camera_rays(K, height, width, PIXEL_SAMPLES[style])
    return {
        int(off): _render_frame(scene, style, camera_pose(scene, int(off)), K, rays_cam,
                                np.random.default_rng([seed, index, int(off) + MAX_ABS_OFFSET, 1]))
        for off in offsets
    }
