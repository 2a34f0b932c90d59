"""toycity: a deterministic procedural street renderer (numpy ray casting).

Every ``index`` is an independent static street scene drawn from ``np.random.default_rng([seed, index])``;
a pinhole camera ~1.5 m above the road drives down the street, ~1 m forward per frame offset, with small smooth
yaw/pitch/roll and lateral perturbations. For each requested frame offset the renderer returns RGB, exact metric
z-depth, labels, camera-facing unit normals (camera frame: x right, y down, z forward), 1-px label edges, the
intrinsics ``K`` and the pose ``cam_to_world``.

World frame: X right across the street, Y forward along the street, Z up; the road surface is the plane Z = 0
and the camera sits at Z = ``CAMERA_HEIGHT``. Pixel conventions follow ``mtlda.geometry``: pixel centres at
integer (u, v), ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.

Styles share the geometry exactly and differ only in appearance: ``"flat"`` (one saturated colour per class,
mild shading) and ``"textured"`` (procedural textures, per-object colours, low sun, fog, colour shift, noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

GENERATOR_VERSION = "2"

CLASS_NAMES = ("road", "sidewalk", "building", "pole", "traffic sign", "vegetation", "sky", "person", "car")
CITYSCAPES_LABEL_IDS = (7, 8, 11, 17, 20, 21, 23, 24, 26)
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = range(len(CLASS_NAMES))

STYLES = ("flat", "textured")

CAMERA_HEIGHT = 1.5  # metres above the road surface
MAX_DEPTH = 150.0  # hits farther than this (z-depth, metres) are invalid: depth 0, valid False
MAX_ABS_OFFSET = 30  # frame offsets are limited to [-30, 30] around the sample's centre frame
HORIZONTAL_FOV_DEG = 90.0

_NEAR = 0.05  # minimum hit distance along the ray (z-depth, metres)
_PARKING_LANE = 2.2  # width of the parking lane along each curb (metres)
_SCENE_BEGIN = -(MAX_ABS_OFFSET * 1.25 + 10.0)  # Y range of the street (metres)
_SCENE_END_OBJECTS = MAX_ABS_OFFSET * 1.25 + MAX_DEPTH + 10.0
_SCENE_END_BUILDINGS = _SCENE_END_OBJECTS + 250.0
_FAR = 1.0e4  # half extent of the "infinite" sidewalk slabs


@dataclass
class Frame:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 where invalid
    valid: np.ndarray  # (H, W) bool
    labels: np.ndarray  # (H, W) uint8 toycity ids
    normals: np.ndarray  # (H, W, 3) float32 unit, camera-facing; zeros where invalid
    edges: np.ndarray  # (H, W) uint8 {0,1}
    K: np.ndarray  # (3, 3) float64
    cam_to_world: np.ndarray  # (4, 4) float64


# ----------------------------------------------------------------------------------------------- scene layout


@dataclass
class _Scene:
    """Static geometry and materials of one street. Primitive ids index ``labels``, ``tints``, ``accents``,
    ``patterns`` and ``aabbs``; id 0 is the road plane, then boxes, cylinders and ellipsoids in that order."""

    road_half_width: float
    lane_x: float  # centre of the camera's (right) driving lane
    step: float  # forward motion per frame offset (metres)
    motion: np.ndarray  # (4, 2, 3) [yaw, pitch, roll, lateral] x 2 harmonics x (amplitude, frequency, phase)
    sun_textured: np.ndarray  # (3,) unit world direction towards the sun
    camera_response: np.ndarray  # (3,) textured-style per-channel gain (exposure times white balance)
    boxes: np.ndarray  # (Nb, 6) xmin ymin zmin xmax ymax zmax
    cylinders: np.ndarray  # (Nc, 5) x y radius zmin zmax, vertical axis
    ellipsoids: np.ndarray  # (Ne, 6) centre xyz, radii xyz
    labels: np.ndarray  # (P,) uint8 class id per primitive
    tints: np.ndarray  # (P, 3) float textured-style base colour per primitive, in [0, 1]
    accents: np.ndarray  # (P, 3) float secondary colour (windows, trousers, glass, sign border), in [0, 1]
    patterns: np.ndarray  # (P,) int texture variant per primitive
    aabbs: np.ndarray  # (P, 6) axis-aligned bounds per primitive

    @property
    def box_ids(self) -> int:
        return 1

    @property
    def cylinder_ids(self) -> int:
        return 1 + len(self.boxes)

    @property
    def ellipsoid_ids(self) -> int:
        return 1 + len(self.boxes) + len(self.cylinders)


class _Material(NamedTuple):
    """Textured-style appearance of one primitive (the flat style ignores it)."""

    tint: tuple[float, float, float]  # base colour in [0, 1]
    accent: tuple[float, float, float]  # secondary colour: windows, trousers, glass, sign border
    pattern: int = 0  # texture variant of the class


@dataclass
class _SceneBuilder:
    rng: np.random.Generator
    boxes: list = field(default_factory=list)
    cylinders: list = field(default_factory=list)
    ellipsoids: list = field(default_factory=list)

    def box(self, lo: Sequence[float], hi: Sequence[float], label: int, material: _Material) -> None:
        self.boxes.append((tuple(lo) + tuple(hi), label, material))

    def cylinder(self, x: float, y: float, radius: float, z0: float, z1: float, label: int,
                 material: _Material) -> None:
        self.cylinders.append(((x, y, radius, z0, z1), label, material))

    def ellipsoid(self, centre: Sequence[float], radii: Sequence[float], label: int, material: _Material) -> None:
        self.ellipsoids.append((tuple(centre) + tuple(radii), label, material))

    def colour(self, base: Sequence[float], spread: float) -> tuple[float, float, float]:
        """``base`` shifted by a uniform random amount in [-spread, spread] per channel, clipped to [0, 1]."""
        shift = self.rng.uniform(-spread, spread, 3).tolist()
        return tuple(min(max(c + s, 0.0), 1.0) for c, s in zip(base, shift))

    def pick(self, palette: Sequence[Sequence[float]], spread: float) -> tuple[float, float, float]:
        return self.colour(palette[self.rng.integers(len(palette))], spread)


def _street_layout(rng: np.random.Generator) -> _Scene:
    """Draw one street: road, curbs, sidewalks, buildings, poles, signs, trees, hedges, cars, persons."""
    half = float(rng.uniform(4.8, 6.8))
    walk = float(rng.uniform(3.5, 6.0))
    curb = float(rng.uniform(0.12, 0.2))
    lane_x = (half - _PARKING_LANE) / 2.0
    b = _SceneBuilder(rng)

    road = _Material(b.colour((0.3, 0.3, 0.32), 0.04), (0.85, 0.85, 0.8))
    paving = _Material(b.colour((0.62, 0.6, 0.57), 0.05), b.colour((0.75, 0.74, 0.7), 0.03))
    for side in (-1.0, 1.0):
        lo, hi = sorted((side * half, side * _FAR))
        b.box((lo, -_FAR, -1.0), (hi, _FAR, curb), SIDEWALK, paving)
    for side in (-1.0, 1.0):
        _place_buildings(b, side, half + walk, curb)
        _place_poles_and_signs(b, side, half, curb)
        _place_trees(b, side, half + walk, curb)
        _place_cars(b, side * (half - _PARKING_LANE / 2.0), 0.35)
        _place_persons(b, side, half, walk, curb)
    _place_cars(b, -lane_x, 0.25)

    motion = np.stack([
        np.stack([rng.uniform(0.3, 1.0, 2) * amp, rng.uniform(0.15, 0.6, 2), rng.uniform(0, 2 * np.pi, 2)], -1)
        for amp in (np.radians(1.5), np.radians(0.8), np.radians(0.8), 0.15)
    ])
    azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(15), np.radians(40))
    sun = np.array([math.cos(azimuth) * math.cos(elevation), math.sin(azimuth) * math.cos(elevation),
                    math.sin(elevation)])

    prims = [((0.0,) * 6, ROAD, road)] + b.boxes + b.cylinders + b.ellipsoids
    aabbs = [(-_FAR, -_FAR, 0.0, _FAR, _FAR, 0.0)] + [p[0] for p in b.boxes]
    aabbs += [(x - r, y - r, z0, x + r, y + r, z1) for (x, y, r, z0, z1), _, _ in b.cylinders]
    aabbs += [(cx - rx, cy - ry, cz - rz, cx + rx, cy + ry, cz + rz)
              for (cx, cy, cz, rx, ry, rz), _, _ in b.ellipsoids]
    return _Scene(
        road_half_width=half, lane_x=lane_x,
        step=float(rng.uniform(0.9, 1.1)), motion=motion, sun_textured=sun,
        camera_response=rng.uniform(0.85, 1.15) * np.array([1.1, 1.0, 0.85]) * rng.uniform(0.95, 1.05, 3),
        boxes=np.array([p[0] for p in b.boxes], dtype=np.float64).reshape(-1, 6),
        cylinders=np.array([p[0] for p in b.cylinders], dtype=np.float64).reshape(-1, 5),
        ellipsoids=np.array([p[0] for p in b.ellipsoids], dtype=np.float64).reshape(-1, 6),
        labels=np.array([p[1] for p in prims], dtype=np.uint8),
        tints=np.array([p[2].tint for p in prims], dtype=np.float64),
        accents=np.array([p[2].accent for p in prims], dtype=np.float64),
        patterns=np.array([p[2].pattern for p in prims], dtype=np.int64),
        aabbs=np.array(aabbs, dtype=np.float64),
    )


_FACADES = ((0.72, 0.62, 0.5), (0.6, 0.35, 0.28), (0.78, 0.76, 0.7), (0.5, 0.52, 0.55), (0.82, 0.7, 0.45))
_GLASS = ((0.16, 0.2, 0.26), (0.25, 0.3, 0.35), (0.12, 0.14, 0.16))
_FOLIAGE = (0.22, 0.42, 0.15)
_BUILDING_PATTERNS = ("windows", "brick", "glass", "shopfront")


def _place_buildings(b: _SceneBuilder, side: float, front: float, ground: float) -> None:
    """Facades of varied length, height and setback behind the sidewalk, with gaps (some hedged), and a taller
    backdrop row that shows through the gaps."""
    rng = b.rng
    y = _SCENE_BEGIN
    while y < _SCENE_END_BUILDINGS:
        if rng.random() < 0.3:
            gap = rng.uniform(3.0, 12.0)
            if rng.random() < 0.8:
                x0 = front + rng.uniform(0.0, 1.0)
                xs = sorted((side * x0, side * (x0 + rng.uniform(0.8, 1.6))))
                b.box((xs[0], y + 0.5, ground), (xs[1], y + gap - 0.5, ground + rng.uniform(0.9, 1.8)),
                      VEGETATION, _Material(b.colour(_FOLIAGE, 0.06), b.colour(_FOLIAGE, 0.06), 1))
            y += gap
        length, height = rng.uniform(8.0, 30.0), rng.uniform(5.0, 16.0)
        x0 = front + (0.0 if rng.random() < 0.5 else rng.uniform(0.5, 4.0))
        xs = sorted((side * x0, side * (x0 + rng.uniform(8.0, 20.0))))
        b.box((xs[0], y, ground), (xs[1], y + length, ground + height), BUILDING,
              _Material(b.pick(_FACADES, 0.06), b.pick(_GLASS, 0.03), int(rng.integers(len(_BUILDING_PATTERNS)))))
        y += length
    y = _SCENE_BEGIN
    while y < _SCENE_END_BUILDINGS:
        length = rng.uniform(15.0, 40.0)
        x0 = front + rng.uniform(24.0, 34.0)
        xs = sorted((side * x0, side * (x0 + 10.0)))
        b.box((xs[0], y, ground), (xs[1], y + length, ground + rng.uniform(8.0, 22.0)), BUILDING,
              _Material(b.pick(_FACADES, 0.06), b.pick(_GLASS, 0.03), int(rng.integers(len(_BUILDING_PATTERNS)))))
        y += length


_SIGN_FACES = ((0.85, 0.12, 0.1), (0.1, 0.3, 0.8), (0.95, 0.8, 0.1), (0.92, 0.92, 0.9))
_METAL = (0.45, 0.46, 0.48)


def _place_poles_and_signs(b: _SceneBuilder, side: float, curb_x: float, ground: float) -> None:
    """Street-light poles near the curb (some carrying a sign) and short sign posts; signs face oncoming
    traffic (normal -Y)."""
    rng = b.rng
    y = _SCENE_BEGIN + rng.uniform(0.0, 10.0)
    while y < _SCENE_END_OBJECTS:
        x = side * (curb_x + rng.uniform(0.35, 0.6))
        tall = rng.random() < 0.6
        top = ground + (rng.uniform(5.0, 8.0) if tall else rng.uniform(2.8, 3.4))
        radius = rng.uniform(0.2, 0.28) if tall else rng.uniform(0.14, 0.2)
        b.cylinder(x, y, radius, ground, top, POLE, _Material(b.colour(_METAL, 0.08), b.colour(_METAL, 0.1)))
        if not tall or rng.random() < 0.4:
            centre_z = top - 0.45 if not tall else ground + rng.uniform(2.6, 3.6)
            half_w, half_h = rng.uniform(0.45, 0.7), rng.uniform(0.45, 0.7)
            cx = x - side * rng.uniform(0.0, 0.3)
            b.box((cx - half_w, y - radius - 0.08, centre_z - half_h), (cx + half_w, y - radius, centre_z + half_h),
                  SIGN, _Material(b.pick(_SIGN_FACES, 0.03), b.colour((0.95, 0.95, 0.95), 0.03),
                                  int(rng.integers(2))))
        y += rng.uniform(6.0, 14.0)


def _place_trees(b: _SceneBuilder, side: float, far_edge_x: float, ground: float) -> None:
    """Trees (cylinder trunk + ellipsoid crown) along the building side of the sidewalk."""
    rng = b.rng
    y = _SCENE_BEGIN + rng.uniform(0.0, 15.0)
    while y < _SCENE_END_OBJECTS:
        if rng.random() < 0.8:
            x = side * (far_edge_x - rng.uniform(0.6, 1.0))
            trunk = rng.uniform(2.0, 3.5)
            rx, rz = rng.uniform(1.6, 2.8), rng.uniform(2.0, 3.2)
            bark = b.colour((0.35, 0.25, 0.16), 0.05)
            b.cylinder(x, y, rng.uniform(0.15, 0.25), ground, ground + trunk + 0.5 * rz, VEGETATION,
                       _Material(bark, bark, 2))
            b.ellipsoid((x, y, ground + trunk + rz * 0.9), (rx, rx * rng.uniform(0.85, 1.15), rz), VEGETATION,
                        _Material(b.colour(_FOLIAGE, 0.07), b.colour(_FOLIAGE, 0.07), 1))
        y += rng.uniform(7.0, 16.0)


_PAINTS = ((0.75, 0.1, 0.08), (0.1, 0.2, 0.55), (0.85, 0.85, 0.85), (0.15, 0.15, 0.17), (0.55, 0.56, 0.6),
           (0.9, 0.75, 0.2))


def _place_cars(b: _SceneBuilder, lane_centre_x: float, density: float) -> None:
    """Cars (body box + glazed cabin box) along a lane; ``density`` is the probability of a car per slot."""
    rng = b.rng
    y = _SCENE_BEGIN + rng.uniform(0.0, 6.0)
    while y < _SCENE_END_OBJECTS:
        length = rng.uniform(3.8, 4.8)
        if rng.random() < density:
            half_w = rng.uniform(0.85, 0.95)
            x = lane_centre_x + rng.uniform(-0.2, 0.2)
            body_top = rng.uniform(0.85, 1.05)
            paint, glass = b.pick(_PAINTS, 0.05), b.pick(_GLASS, 0.03)
            b.box((x - half_w, y, 0.12), (x + half_w, y + length, body_top), CAR, _Material(paint, glass, 0))
            inset = rng.uniform(0.8, 1.2)
            b.box((x - half_w + 0.1, y + inset, body_top),
                  (x + half_w - 0.1, y + length - inset * 0.8, body_top + rng.uniform(0.45, 0.6)), CAR,
                  _Material(paint, glass, 1))
        y += length + rng.uniform(0.8, 6.0)


def _place_persons(b: _SceneBuilder, side: float, curb_x: float, walk: float, ground: float) -> None:
    """Pedestrians (cylinder body + ellipsoid head) on the sidewalk, wider than real ones so that a small model
    can learn them."""
    rng = b.rng
    y = _SCENE_BEGIN + rng.exponential(3.0)
    while y < _SCENE_END_OBJECTS:
        x = side * (curb_x + rng.uniform(0.5, walk - 0.5))
        height, radius, head = rng.uniform(1.6, 1.95), rng.uniform(0.26, 0.34), rng.uniform(0.13, 0.16)
        clothes = _Material(b.colour((0.5, 0.5, 0.5), 0.4), b.colour((0.25, 0.25, 0.3), 0.2))
        b.cylinder(x, y, radius, ground, ground + height - 2 * head, PERSON, clothes)
        skin = b.colour((0.75, 0.55, 0.42), 0.15)
        b.ellipsoid((x, y, ground + height - head), (head, head, head * 1.15), PERSON, _Material(skin, skin))
        y += rng.exponential(2.5) + 0.6


# ------------------------------------------------------------------------------------------------ camera model


def camera_matrix(height: int, width: int) -> np.ndarray:
    """(3, 3) float64 pinhole intrinsics for an image of ``height`` x ``width`` pixels.

    Fixed horizontal field of view (``HORIZONTAL_FOV_DEG``), square pixels, principal point slightly off-centre;
    scales with the resolution following the ``mtlda.geometry`` resize convention.
    """
    fx = 0.5 * width / math.tan(math.radians(HORIZONTAL_FOV_DEG) / 2.0)
    cx = 0.51 * width - 0.5
    cy = 0.47 * height - 0.5
    return np.array([[fx, 0.0, cx], [0.0, fx, cy], [0.0, 0.0, 1.0]])


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# Camera axes (x right, y down, z forward) expressed in the world frame (X right, Y forward, Z up).
_CAMERA_AXES_IN_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _camera_pose(scene: _Scene, offset: int) -> np.ndarray:
    """(4, 4) float64 cam_to_world of the frame at ``offset``: smooth yaw/pitch/roll/lateral perturbations
    (sums of two sinusoids of the offset, so consecutive frames differ by a fraction of a degree)."""
    yaw, pitch, roll, lateral = (sum(a * math.sin(f * offset + p) for a, f, p in harmonics.tolist())
                                 for harmonics in scene.motion)
    pose = np.eye(4)
    pose[:3, :3] = _CAMERA_AXES_IN_WORLD @ _rotation(1, yaw) @ _rotation(0, pitch) @ _rotation(2, roll)
    pose[:3, 3] = (scene.lane_x + lateral, scene.step * offset, CAMERA_HEIGHT)
    return pose


def _camera_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) camera-frame ray directions with z = 1, so that the ray parameter is the z-depth."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)


_BOX_CORNERS = np.stack(np.meshgrid([0, 3], [1, 4], [2, 5], indexing="ij"), -1).reshape(8, 3)
_BOX_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])


def _screen_rects(aabbs: np.ndarray, pose: np.ndarray, K: np.ndarray, height: int,
                  width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rectangles (P, 4) int [v0, v1, u0, u1) that contain the projection of each box clipped to the near
    plane (empty when unseen), and the nearest z-depth (P,) of each box (a lower bound for all its points)."""
    cam = (aabbs[:, _BOX_CORNERS] - pose[:3, 3]) @ pose[:3, :3]  # (P, 8, 3)
    a, b = cam[:, _BOX_EDGES[:, 0]], cam[:, _BOX_EDGES[:, 1]]  # (P, 12, 3) edge end points
    crosses = (a[..., 2] - _NEAR) * (b[..., 2] - _NEAR) < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(crosses, (_NEAR - a[..., 2]) / (b[..., 2] - a[..., 2]), 0.0)
    on_near_plane = a + s[..., None] * (b - a)
    points = np.concatenate([cam, on_near_plane], 1)  # (P, 20, 3)
    usable = np.concatenate([cam[..., 2] >= _NEAR, crosses], 1)
    z = np.maximum(points[..., 2], _NEAR)
    u = K[0, 0] * points[..., 0] / z + K[0, 2]
    v = K[1, 1] * points[..., 1] / z + K[1, 2]
    big = 1e9
    rects = np.stack([np.floor(np.where(usable, v, big).min(1)), np.ceil(np.where(usable, v, -big).max(1)) + 1,
                      np.floor(np.where(usable, u, big).min(1)), np.ceil(np.where(usable, u, -big).max(1)) + 1], -1)
    rects = np.clip(rects, 0, [height, height, width, width]).astype(np.int64)
    rects[~usable.any(1)] = 0
    return rects, cam[..., 2].min(1)


# ------------------------------------------------------------------------------------- ray-primitive intersection
# Rays are o + t d with d given as three (h, w) component arrays and t the z-depth (camera-frame d has z = 1).
# Each intersector returns t (h, w) (inf where missed) and a function giving the unit normals (3, n) of the
# pixels selected by a boolean mask; all primitives are seen from outside, so normals face the camera.


def _intersect_box(o: np.ndarray, d: np.ndarray, inv_d: np.ndarray, box: np.ndarray):
    """Entry hits with the axis-aligned box (xmin, ymin, zmin, xmax, ymax, zmax)."""
    lo, hi = [], []
    for k in range(3):
        t1, t2 = (box[k] - o[k]) * inv_d[k], (box[k + 3] - o[k]) * inv_d[k]
        lo.append(np.minimum(t1, t2))
        hi.append(np.maximum(t1, t2))
    t_near = np.maximum(np.maximum(lo[0], lo[1]), lo[2])
    t_far = np.minimum(np.minimum(hi[0], hi[1]), hi[2])
    t = np.where((t_near <= t_far) & (t_near > _NEAR), t_near, np.inf)

    def normal(mask: np.ndarray) -> np.ndarray:
        axis = np.stack([lo[0][mask], lo[1][mask], lo[2][mask]]).argmax(0)
        n = np.zeros((3, len(axis)))
        n[axis, np.arange(len(axis))] = -np.sign(d[:, mask][axis, np.arange(len(axis))])
        return n

    return t, normal


def _intersect_cylinder(o: np.ndarray, d: np.ndarray, cyl: np.ndarray):
    """Hits with the vertical cylinder (x, y, radius, zmin, zmax), capped on top."""
    x, y, r, z0, z1 = cyl
    ox, oy = o[0] - x, o[1] - y
    dx, dy, dz = d
    a = np.maximum(dx * dx + dy * dy, 1e-18)
    half_b = ox * dx + oy * dy
    disc = half_b * half_b - a * (ox * ox + oy * oy - r * r)
    t_side = (-half_b - np.sqrt(np.maximum(disc, 0.0))) / a
    z_side = o[2] + t_side * dz
    t = np.where((disc > 0) & (t_side > _NEAR) & (z_side >= z0) & (z_side <= z1), t_side, np.inf)
    cap = np.zeros(t.shape, dtype=bool)
    if o[2] > z1:
        t_cap = (z1 - o[2]) / np.minimum(dz, -1e-12)
        px, py = ox + t_cap * dx, oy + t_cap * dy
        cap = (dz < 0) & (px * px + py * py <= r * r) & (t_cap > _NEAR) & (t_cap < t)
        t = np.where(cap, t_cap, t)

    def normal(mask: np.ndarray) -> np.ndarray:
        tm = t[mask]
        n = np.stack([(ox + tm * dx[mask]) / r, (oy + tm * dy[mask]) / r, np.zeros_like(tm)])
        n[:, cap[mask]] = ((0.0,), (0.0,), (1.0,))
        return n

    return t, normal


def _intersect_ellipsoid(o: np.ndarray, d: np.ndarray, ell: np.ndarray):
    """Hits with the axis-aligned ellipsoid (centre xyz, radii xyz)."""
    oc = [(o[k] - ell[k]) / ell[k + 3] for k in range(3)]
    dd = [d[k] / ell[k + 3] for k in range(3)]
    a = dd[0] * dd[0] + dd[1] * dd[1] + dd[2] * dd[2]
    half_b = dd[0] * oc[0] + dd[1] * oc[1] + dd[2] * oc[2]
    disc = half_b * half_b - a * (oc[0] ** 2 + oc[1] ** 2 + oc[2] ** 2 - 1.0)
    t_hit = (-half_b - np.sqrt(np.maximum(disc, 0.0))) / a
    t = np.where((disc > 0) & (t_hit > _NEAR), t_hit, np.inf)

    def normal(mask: np.ndarray) -> np.ndarray:
        tm = t[mask]
        n = np.stack([(oc[k] + tm * dd[k][mask]) / ell[k + 3] for k in range(3)])
        return n / np.linalg.norm(n, axis=0)

    return t, normal


@dataclass
class _Hits:
    depth: np.ndarray  # (H, W) z-depth in metres, inf where the ray escapes (sky)
    normal: np.ndarray  # (H, W, 3) unit world normal facing the camera, zeros for sky
    prim: np.ndarray  # (H, W) int primitive id, -1 for sky


def _cast_rays(scene: _Scene, pose: np.ndarray, K: np.ndarray, rays_cam: np.ndarray) -> _Hits:
    """Nearest hit per pixel over the road plane, boxes, cylinders and ellipsoids. Primitives are visited front
    to back, each only inside its screen rectangle, and skipped when everything there is already nearer."""
    height, width = rays_cam.shape[:2]
    o = pose[:3, 3]
    d = np.ascontiguousarray(np.moveaxis(rays_cam @ pose[:3, :3].T, -1, 0))  # (3, H, W) world directions
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    inv_d = 1.0 / d
    depth = np.full((height, width), np.inf)
    normal = np.zeros((3, height, width))
    prim = np.full((height, width), -1, dtype=np.int64)

    going_down = d[2] < 0
    depth[going_down] = -o[2] / d[2][going_down]
    normal[2][going_down] = 1.0
    prim[going_down] = 0

    rects, nearest = _screen_rects(scene.aabbs, pose, K, height, width)
    seen = (rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2])
    seen[0] = False
    order = np.argsort(nearest, kind="stable")
    for pid in order[seen[order]]:
        v0, v1, u0, u1 = rects[pid]
        sl = (slice(v0, v1), slice(u0, u1))
        if nearest[pid] >= depth[sl].max():
            continue
        dsl = d[(slice(None),) + sl]
        if pid < scene.cylinder_ids:
            t, normal_of = _intersect_box(o, dsl, inv_d[(slice(None),) + sl], scene.boxes[pid - scene.box_ids])
        elif pid < scene.ellipsoid_ids:
            t, normal_of = _intersect_cylinder(o, dsl, scene.cylinders[pid - scene.cylinder_ids])
        else:
            t, normal_of = _intersect_ellipsoid(o, dsl, scene.ellipsoids[pid - scene.ellipsoid_ids])
        closer = t < depth[sl]
        if not closer.any():
            continue
        depth[sl][closer] = t[closer]
        normal[(slice(None),) + sl][:, closer] = normal_of(closer)
        prim[sl][closer] = pid
    normal = np.moveaxis(normal, 0, -1)
    facing_away = (normal * np.moveaxis(d, 0, -1)).sum(-1) > 0
    normal[facing_away] *= -1.0
    return _Hits(depth=depth, normal=normal, prim=prim)


# ------------------------------------------------------------------------------------------- textures, shading


def _hash01(*coords: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic per-lattice-cell value in [0, 1) from integer coordinates (64-bit integer mixing)."""
    h = np.full(np.shape(coords[0]), (salt * 0x9E3779B97F4A7C15) % (1 << 64), dtype=np.uint64)
    for k, c in enumerate(coords):
        h ^= np.asarray(c).astype(np.int64).astype(np.uint64) * np.uint64((0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                                                                          0x27D4EB2F165667C5)[k])
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _value_noise(x: np.ndarray, y: np.ndarray, salt: int) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1) with unit lattice spacing."""
    ix, iy = np.floor(x), np.floor(y)
    fx, fy = x - ix, y - iy
    sx, sy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    c00, c10 = _hash01(ix, iy, salt=salt), _hash01(ix + 1, iy, salt=salt)
    c01, c11 = _hash01(ix, iy + 1, salt=salt), _hash01(ix + 1, iy + 1, salt=salt)
    return (c00 * (1 - sx) + c10 * sx) * (1 - sy) + (c01 * (1 - sx) + c11 * sx) * sy


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


_FLAT_COLOURS = np.array([
    (0.55, 0.2, 0.55),  # road
    (0.95, 0.45, 0.85),  # sidewalk
    (0.2, 0.35, 0.9),  # building
    (0.9, 0.9, 0.2),  # pole
    (1.0, 0.55, 0.0),  # traffic sign
    (0.1, 0.85, 0.2),  # vegetation
    (0.3, 0.85, 1.0),  # sky
    (1.0, 0.1, 0.2),  # person
    (0.1, 0.1, 0.6),  # car
])
_FLAT_SUN = np.array([-0.4, -0.3, 0.87]) / np.linalg.norm([-0.4, -0.3, 0.87])


def _shade_flat(labels: np.ndarray, hits: _Hits) -> np.ndarray:
    """(H, W, 3) float RGB: one saturated colour per class, mild Lambertian shading."""
    lambert = np.clip(hits.normal @ _FLAT_SUN, 0.0, 1.0)
    shade = np.where(hits.prim >= 0, 0.75 + 0.25 * lambert, 1.0)
    return _FLAT_COLOURS[labels] * shade[..., None]


def _road_albedo(scene: _Scene, p: np.ndarray, tint: np.ndarray, accent: np.ndarray) -> np.ndarray:
    """Asphalt noise with a dashed centre line and solid lines along the parking lanes."""
    grain = 0.1 * _value_noise(p[:, 0] / 0.8, p[:, 1] / 0.8, 11) + 0.08 * _hash01(
        np.floor(p[:, 0] * 25), np.floor(p[:, 1] * 25), salt=12) - 0.09
    colour = tint + grain[:, None]
    x = np.abs(p[:, 0])
    marking = ((x < 0.08) & (_frac(p[:, 1] / 9.0) < 0.45)) | (
        np.abs(x - (scene.road_half_width - _PARKING_LANE)) < 0.07)
    colour[marking] = accent[marking] + 0.05 * grain[marking, None]
    return colour


def _sidewalk_albedo(p: np.ndarray, n: np.ndarray, tint: np.ndarray, accent: np.ndarray) -> np.ndarray:
    """Square paving slabs with dark joints on top, lighter kerb stones on the vertical faces."""
    top = n[:, 2] > 0.5
    joint = (_frac(p[:, 0] / 0.6) < 0.06) | (_frac(p[:, 1] / 0.6) < 0.06)
    slab = 0.06 * _hash01(np.floor(p[:, 0] / 0.6), np.floor(p[:, 1] / 0.6), salt=21)[:, None]
    colour = np.where(top[:, None], tint + slab, accent)
    colour[top & joint] *= 0.7
    return colour + 0.05 * (_hash01(np.floor(p[:, 0] * 30), np.floor(p[:, 1] * 30), salt=22) - 0.5)[:, None]


def _building_albedo(p: np.ndarray, n: np.ndarray, tint: np.ndarray, accent: np.ndarray, pattern: np.ndarray,
                     base_z: np.ndarray) -> np.ndarray:
    """Facades with window grids (plain, brick, curtain-wall glass, shop front), dark roofs."""
    along = np.where(np.abs(n[:, 0]) > np.abs(n[:, 1]), p[:, 1], p[:, 0])
    z = p[:, 2] - base_z
    colour = tint.copy()
    brick = pattern == _BUILDING_PATTERNS.index("brick")
    row = np.floor(z / 0.3)
    mortar = (_frac(z / 0.3) < 0.12) | (_frac((along + 0.3 * (row % 2)) / 0.6) < 0.06)
    colour[brick & mortar] = 0.8 * colour[brick & mortar] + 0.15
    glass_wall = pattern == _BUILDING_PATTERNS.index("glass")
    window = np.where(glass_wall, (_frac(along / 1.5) < 0.88) & (_frac(z / 3.5) < 0.72),
                      (_frac(along / 2.6) > 0.25) & (_frac(along / 2.6) < 0.72) & (_frac(z / 3.2) > 0.3)
                      & (_frac(z / 3.2) < 0.8))
    shop = pattern == _BUILDING_PATTERNS.index("shopfront")
    window = np.where(shop & (z < 3.2), (z > 0.4) & (z < 2.8) & (_frac(along / 6.0) < 0.8), window & (z > 1.0))
    window &= np.abs(n[:, 2]) < 0.5
    reflection = 0.12 * _frac(z / 3.2)[:, None] + 0.05 * _hash01(np.floor(along / 2.6), np.floor(z / 3.2), salt=31)[
        :, None]
    colour[window] = accent[window] + reflection[window]
    colour[n[:, 2] > 0.5] = 0.3 * tint[n[:, 2] > 0.5] + 0.1
    return colour + 0.04 * (_hash01(np.floor(along * 12), np.floor(z * 12), salt=32) - 0.5)[:, None]


def _sign_albedo(p: np.ndarray, n: np.ndarray, tint: np.ndarray, accent: np.ndarray, pattern: np.ndarray,
                 aabb: np.ndarray) -> np.ndarray:
    """Coloured sign plates with a light border (pattern 0) or a light centre disc (pattern 1); grey backs."""
    centre, half = (aabb[:, :3] + aabb[:, 3:]) / 2.0, (aabb[:, 3:] - aabb[:, :3]) / 2.0
    lx = (p[:, 0] - centre[:, 0]) / half[:, 0]
    lz = (p[:, 2] - centre[:, 2]) / half[:, 2]
    mark = np.where(pattern == 0, np.maximum(np.abs(lx), np.abs(lz)) > 0.8, lx * lx + lz * lz < 0.25)
    colour = np.where(mark[:, None], accent, tint)
    return np.where((n[:, 1] < -0.5)[:, None], colour, np.array(_METAL))


def _vegetation_albedo(p: np.ndarray, tint: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Leafy clumps (3-D cell noise) for crowns and hedges, vertical streaks for bark."""
    leaves = 0.7 + 0.6 * _hash01(*np.floor(p.T / 0.2), salt=41)
    bark = 0.85 + 0.3 * _hash01(np.floor(p[:, 0] * 20), np.floor(p[:, 1] * 20), np.floor(p[:, 2] * 3), salt=42)
    return tint * np.where(pattern == 2, bark, leaves)[:, None]


def _person_albedo(p: np.ndarray, tint: np.ndarray, accent: np.ndarray, aabb: np.ndarray) -> np.ndarray:
    """Shirt above, trousers below (the head's tint and accent are both skin)."""
    legs = p[:, 2] - aabb[:, 2] < 0.5 * (aabb[:, 5] - aabb[:, 2])
    return np.where(legs[:, None], accent, tint)


def _car_albedo(p: np.ndarray, n: np.ndarray, tint: np.ndarray, accent: np.ndarray, pattern: np.ndarray,
                aabb: np.ndarray) -> np.ndarray:
    """Painted body with dark wheel band, glazed cabin sides with a painted roof."""
    colour = tint.copy()
    wheels = (pattern == 0) & (p[:, 2] - aabb[:, 2] < 0.25)
    colour[wheels] = 0.08
    glazed = (pattern == 1) & (n[:, 2] < 0.5)
    colour[glazed] = accent[glazed] + 0.15 * ((p[glazed, 2] - aabb[glazed, 2]) / (aabb[glazed, 5] - aabb[glazed, 2]))[
        :, None]
    return colour


def _sky_colour(d: np.ndarray, horizon: np.ndarray, zenith: np.ndarray, salt: int) -> np.ndarray:
    """(N, 3) sky: horizon-to-zenith gradient with soft clouds, from world ray directions (N, 3)."""
    elevation = np.clip(d[:, 2] / np.linalg.norm(d, axis=-1), 0.0, 1.0)
    colour = horizon + (zenith - horizon) * np.sqrt(elevation)[:, None]
    height = np.maximum(d[:, 2], 1e-3)
    cloud = _value_noise(d[:, 0] / height * 2.0, d[:, 1] / height * 2.0, salt)
    cloud = np.clip((cloud - 0.55) * 3.0, 0.0, 1.0) * np.clip(elevation * 8.0, 0.0, 1.0)
    return colour + (0.95 - colour) * cloud[:, None]


def _textured_albedo(scene: _Scene, labels: np.ndarray, points: np.ndarray, hits: _Hits) -> np.ndarray:
    """(N, 3) albedo of the N hit pixels (``labels``, ``points`` (N, 3) world) by class texture."""
    prim = hits.prim[hits.prim >= 0]
    n = hits.normal[hits.prim >= 0]
    tint, accent, pattern, aabb = scene.tints[prim], scene.accents[prim], scene.patterns[prim], scene.aabbs[prim]
    albedo = tint.copy()
    textures = {
        ROAD: lambda m: _road_albedo(scene, points[m], tint[m], accent[m]),
        SIDEWALK: lambda m: _sidewalk_albedo(points[m], n[m], tint[m], accent[m]),
        BUILDING: lambda m: _building_albedo(points[m], n[m], tint[m], accent[m], pattern[m], aabb[m, 2]),
        POLE: lambda m: tint[m] * (0.9 + 0.2 * _hash01(np.floor(points[m, 2] * 4), salt=51))[:, None],
        SIGN: lambda m: _sign_albedo(points[m], n[m], tint[m], accent[m], pattern[m], aabb[m]),
        VEGETATION: lambda m: _vegetation_albedo(points[m], tint[m], pattern[m]),
        PERSON: lambda m: _person_albedo(points[m], tint[m], accent[m], aabb[m]),
        CAR: lambda m: _car_albedo(points[m], n[m], tint[m], accent[m], pattern[m], aabb[m]),
    }
    for label, texture in textures.items():
        m = labels == label
        if m.any():
            albedo[m] = texture(m)
    return albedo


def _shade_textured(scene: _Scene, labels: np.ndarray, hits: _Hits, pose: np.ndarray, rays_cam: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float RGB: textures, low sun + sky light, distance fog, warm colour shift, sensor noise."""
    d = rays_cam @ pose[:3, :3].T
    hit = hits.prim >= 0
    horizon, zenith = np.array([0.82, 0.8, 0.74]), np.array([0.3, 0.45, 0.75])
    rgb = np.empty(labels.shape + (3,))
    rgb[~hit] = _sky_colour(d[~hit], horizon, zenith, salt=61)
    points = pose[:3, 3] + hits.depth[hit][:, None] * d[hit]
    albedo = _textured_albedo(scene, labels[hit], points, hits)
    n = hits.normal[hit]
    light = 0.28 + 0.12 * n[:, 2] + 0.9 * np.clip(n @ scene.sun_textured, 0.0, 1.0)
    distance = hits.depth[hit] * np.linalg.norm(d[hit], axis=-1)
    fog = 1.0 - np.exp(-distance / 220.0)
    rgb[hit] = albedo * light[:, None] * (1 - fog[:, None]) + horizon * fog[:, None]
    rgb = np.maximum(rgb * scene.camera_response, 0.0) ** 0.9
    return rgb + rng.normal(0.0, 0.02, rgb.shape)


# ----------------------------------------------------------------------------------------- labels and frames


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """(H, W) uint8: 1 on the pixel left of / above every change of label (1-px semantic boundaries)."""
    edges = np.zeros(labels.shape, dtype=bool)
    horizontal = labels[:, :-1] != labels[:, 1:]
    vertical = labels[:-1, :] != labels[1:, :]
    edges[:, :-1] |= horizontal
    edges[:-1, :] |= vertical
    return edges.astype(np.uint8)


def _render_frame(scene: _Scene, style: str, pose: np.ndarray, K: np.ndarray, rays_cam: np.ndarray,
                  noise_rng: np.random.Generator) -> Frame:
    hits = _cast_rays(scene, pose, K, rays_cam)
    labels = np.where(hits.prim >= 0, scene.labels[np.maximum(hits.prim, 0)], SKY).astype(np.uint8)
    valid = (hits.prim >= 0) & (hits.depth <= MAX_DEPTH)
    normals = np.where(valid[..., None], hits.normal @ pose[:3, :3], 0.0)
    if style == "flat":
        rgb = _shade_flat(labels, hits)
    else:
        rgb = _shade_textured(scene, labels, hits, pose, rays_cam, noise_rng)
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
    other offsets are requested, and both styles share geometry, depth, labels, normals and edges exactly."""
    _check_arguments(index, style, height, width, seed, offsets)
    scene = _street_layout(np.random.default_rng([seed, index]))
    K = camera_matrix(height, width)
    rays_cam = _camera_rays(K, height, width)
    return {
        int(off): _render_frame(scene, style, _camera_pose(scene, int(off)), K, rays_cam,
                                np.random.default_rng([seed, index, int(off) + MAX_ABS_OFFSET, 1]))
        for off in offsets
    }


__all__ = ["Frame", "render_sample", "camera_matrix", "GENERATOR_VERSION", "STYLES", "CLASS_NAMES",
           "CITYSCAPES_LABEL_IDS", "CAMERA_HEIGHT", "MAX_DEPTH", "MAX_ABS_OFFSET"]
