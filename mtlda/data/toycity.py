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

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

GENERATOR_VERSION = "1"

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
    sidewalk_width: float
    curb_height: float
    lane_x: float
    step: float  # forward motion per frame offset (metres)
    motion: np.ndarray  # (4, 2, 3) [yaw, pitch, roll, lateral] x 2 harmonics x (amplitude, frequency, phase)
    sun_textured: np.ndarray  # (3,) unit world direction towards the sun
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
        return tuple(float(c) for c in np.clip(np.asarray(base) + self.rng.uniform(-spread, spread, 3), 0.0, 1.0))

    def pick(self, palette: Sequence[Sequence[float]], spread: float) -> tuple[float, float, float]:
        return self.colour(palette[self.rng.integers(len(palette))], spread)


def _street_layout(rng: np.random.Generator) -> _Scene:
    """Draw one street: road, curbs, sidewalks, buildings, poles, signs, trees, hedges, cars, persons."""
    half = float(rng.uniform(5.2, 7.0))
    walk = float(rng.uniform(2.8, 4.5))
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
        _place_cars(b, side * (half - _PARKING_LANE / 2.0), 0.55)
        _place_persons(b, side, half, walk, curb)
    _place_cars(b, -lane_x, 0.25)

    motion = np.stack([
        np.stack([rng.uniform(0.3, 1.0, 2) * amp, rng.uniform(0.15, 0.6, 2), rng.uniform(0, 2 * np.pi, 2)], -1)
        for amp in (np.radians(1.5), np.radians(0.8), np.radians(0.8), 0.15)
    ])
    azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(15), np.radians(40))
    sun = np.array([np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)])

    prims = [((0.0,) * 6, ROAD, road)] + b.boxes + b.cylinders + b.ellipsoids
    aabbs = [(-_FAR, -_FAR, 0.0, _FAR, _FAR, 0.0)] + [p[0] for p in b.boxes]
    aabbs += [(x - r, y - r, z0, x + r, y + r, z1) for (x, y, r, z0, z1), _, _ in b.cylinders]
    aabbs += [(cx - rx, cy - ry, cz - rz, cx + rx, cy + ry, cz + rz)
              for (cx, cy, cz, rx, ry, rz), _, _ in b.ellipsoids]
    return _Scene(
        road_half_width=half, sidewalk_width=walk, curb_height=curb, lane_x=lane_x,
        step=float(rng.uniform(0.9, 1.1)), motion=motion, sun_textured=sun,
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
BUILDING_PATTERNS = ("windows", "brick", "glass", "shopfront")


def _place_buildings(b: _SceneBuilder, side: float, front: float, ground: float) -> None:
    """Facades of varied length, height and setback behind the sidewalk, with gaps (some hedged), and a taller
    backdrop row that shows through the gaps."""
    rng = b.rng
    y = _SCENE_BEGIN
    while y < _SCENE_END_BUILDINGS:
        if rng.random() < 0.3:
            gap = rng.uniform(3.0, 12.0)
            if rng.random() < 0.6:
                x0 = front + rng.uniform(0.0, 1.0)
                xs = sorted((side * x0, side * (x0 + rng.uniform(0.8, 1.6))))
                b.box((xs[0], y + 0.5, ground), (xs[1], y + gap - 0.5, ground + rng.uniform(0.9, 1.8)),
                      VEGETATION, _Material(b.colour(_FOLIAGE, 0.06), b.colour(_FOLIAGE, 0.06), 1))
            y += gap
        length, height = rng.uniform(8.0, 30.0), rng.uniform(7.0, 24.0)
        x0 = front + (0.0 if rng.random() < 0.5 else rng.uniform(0.5, 4.0))
        xs = sorted((side * x0, side * (x0 + rng.uniform(8.0, 20.0))))
        b.box((xs[0], y, ground), (xs[1], y + length, ground + height), BUILDING,
              _Material(b.pick(_FACADES, 0.06), b.pick(_GLASS, 0.03), int(rng.integers(len(BUILDING_PATTERNS)))))
        y += length
    y = _SCENE_BEGIN
    while y < _SCENE_END_BUILDINGS:
        length = rng.uniform(15.0, 40.0)
        x0 = front + rng.uniform(24.0, 34.0)
        xs = sorted((side * x0, side * (x0 + 10.0)))
        b.box((xs[0], y, ground), (xs[1], y + length, ground + rng.uniform(12.0, 30.0)), BUILDING,
              _Material(b.pick(_FACADES, 0.06), b.pick(_GLASS, 0.03), int(rng.integers(len(BUILDING_PATTERNS)))))
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
        radius = rng.uniform(0.14, 0.2) if tall else rng.uniform(0.09, 0.13)
        b.cylinder(x, y, radius, ground, top, POLE, _Material(b.colour(_METAL, 0.08), b.colour(_METAL, 0.1)))
        if not tall or rng.random() < 0.4:
            centre_z = top - 0.45 if not tall else ground + rng.uniform(2.6, 3.6)
            half_w, half_h = rng.uniform(0.35, 0.55), rng.uniform(0.35, 0.55)
            cx = x - side * rng.uniform(0.0, 0.3)
            b.box((cx - half_w, y - radius - 0.08, centre_z - half_h), (cx + half_w, y - radius, centre_z + half_h),
                  SIGN, _Material(b.pick(_SIGN_FACES, 0.03), b.colour((0.95, 0.95, 0.95), 0.03),
                                  int(rng.integers(2))))
        y += rng.uniform(9.0, 20.0)


def _place_trees(b: _SceneBuilder, side: float, far_edge_x: float, ground: float) -> None:
    """Trees (cylinder trunk + ellipsoid crown) along the building side of the sidewalk."""
    rng = b.rng
    y = _SCENE_BEGIN + rng.uniform(0.0, 15.0)
    while y < _SCENE_END_OBJECTS:
        if rng.random() < 0.55:
            x = side * (far_edge_x - rng.uniform(0.6, 1.0))
            trunk = rng.uniform(2.0, 3.5)
            rx, rz = rng.uniform(1.4, 2.4), rng.uniform(1.8, 3.0)
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
        y += rng.exponential(3.5) + 0.8


# ------------------------------------------------------------------------------------------------ camera model


def camera_matrix(height: int, width: int) -> np.ndarray:
    """(3, 3) float64 pinhole intrinsics for an image of ``height`` x ``width`` pixels.

    Fixed horizontal field of view (``HORIZONTAL_FOV_DEG``), square pixels, principal point slightly off-centre;
    scales with the resolution following the ``mtlda.geometry`` resize convention.
    """
    fx = 0.5 * width / np.tan(np.radians(HORIZONTAL_FOV_DEG) / 2.0)
    cx = 0.51 * width - 0.5
    cy = 0.47 * height - 0.5
    return np.array([[fx, 0.0, cx], [0.0, fx, cy], [0.0, 0.0, 1.0]])


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# Camera axes (x right, y down, z forward) expressed in the world frame (X right, Y forward, Z up).
_CAMERA_AXES_IN_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def camera_pose(scene: _Scene, offset: int) -> np.ndarray:
    """(4, 4) float64 cam_to_world of the frame at ``offset``: smooth yaw/pitch/roll/lateral perturbations."""
    amp, freq, phase = scene.motion[..., 0], scene.motion[..., 1], scene.motion[..., 2]
    yaw, pitch, roll, lateral = (amp * np.sin(freq * offset + phase)).sum(-1)
    pose = np.eye(4)
    pose[:3, :3] = _CAMERA_AXES_IN_WORLD @ _rotation(1, yaw) @ _rotation(0, pitch) @ _rotation(2, roll)
    pose[:3, 3] = (scene.lane_x + lateral, scene.step * offset, CAMERA_HEIGHT)
    return pose


def _camera_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) camera-frame ray directions with z = 1, so that the ray parameter is the z-depth."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)


def _screen_rects(aabbs: np.ndarray, pose: np.ndarray, K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(P, 4) int [v0, v1, u0, u1) pixel rectangles that contain each box's projection (empty when unseen)."""
    corners = np.stack(np.meshgrid([0, 3], [1, 4], [2, 5], indexing="ij"), -1).reshape(8, 3)
    pts = aabbs[:, corners]
    cam = (pts - pose[:3, 3]) @ pose[:3, :3]
    z = cam[..., 2]
    in_front = z > _NEAR
    zc = np.maximum(z, _NEAR)
    u = K[0, 0] * cam[..., 0] / zc + K[0, 2]
    v = K[1, 1] * cam[..., 1] / zc + K[1, 2]
    rects = np.stack([np.floor(v.min(1)), np.ceil(v.max(1)) + 1, np.floor(u.min(1)), np.ceil(u.max(1)) + 1], -1)
    rects = np.clip(rects, 0, [height, height, width, width]).astype(np.int64)
    straddles = in_front.any(1) & ~in_front.all(1)
    rects[straddles] = (0, height, 0, width)
    rects[~in_front.any(1)] = 0
    return rects


# ------------------------------------------------------------------------------------- ray-primitive intersection


def _intersect_box(o: np.ndarray, d: np.ndarray, inv_d: np.ndarray, box: np.ndarray):
    """Entry hits of rays o + t d (d (..., 3)) with a box seen from outside -> t (...) (inf = miss), normal."""
    t1 = (box[:3] - o) * inv_d
    t2 = (box[3:] - o) * inv_d
    t_lo, t_hi = np.minimum(t1, t2), np.maximum(t1, t2)
    axis = t_lo.argmax(-1)
    t_near = np.take_along_axis(t_lo, axis[..., None], -1)[..., 0]
    hit = (t_near <= t_hi.min(-1)) & (t_near > _NEAR)
    t = np.where(hit, t_near, np.inf)

    def normal(mask: np.ndarray) -> np.ndarray:
        ax = axis[mask]
        n = np.zeros((len(ax), 3))
        n[np.arange(len(ax)), ax] = -np.sign(d[mask][np.arange(len(ax)), ax])
        return n

    return t, normal


def _intersect_cylinder(o: np.ndarray, d: np.ndarray, cyl: np.ndarray):
    """Hits of rays with a vertical capped cylinder (x, y, radius, z0, z1) seen from outside."""
    x, y, r, z0, z1 = cyl
    ox, oy = o[0] - x, o[1] - y
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    a = np.maximum(dx * dx + dy * dy, 1e-18)
    half_b = ox * dx + oy * dy
    disc = half_b * half_b - a * (ox * ox + oy * oy - r * r)
    t_side = (-half_b - np.sqrt(np.maximum(disc, 0.0))) / a
    z_side = o[2] + t_side * dz
    t = np.where((disc > 0) & (t_side > _NEAR) & (z_side >= z0) & (z_side <= z1), t_side, np.inf)
    if o[2] > z1:
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cap = (z1 - o[2]) / dz
        px, py = ox + t_cap * dx, oy + t_cap * dy
        cap = (dz < 0) & (px * px + py * py <= r * r) & (t_cap > _NEAR) & (t_cap < t)
        t = np.where(cap, t_cap, t)
    else:
        cap = np.zeros(t.shape, bool)

    def normal(mask: np.ndarray) -> np.ndarray:
        tm, dm = t[mask], d[mask]
        n = np.stack([ox + tm * dm[:, 0], oy + tm * dm[:, 1], np.zeros_like(tm)], -1) / r
        n[cap[mask]] = (0.0, 0.0, 1.0)
        return n

    return t, normal


def _intersect_ellipsoid(o: np.ndarray, d: np.ndarray, ell: np.ndarray):
    """Hits of rays with an axis-aligned ellipsoid (centre xyz, radii xyz) seen from outside."""
    centre, radii = ell[:3], ell[3:]
    oc = (o - centre) / radii
    dd = d / radii
    a = (dd * dd).sum(-1)
    half_b = (dd * oc).sum(-1)
    disc = half_b * half_b - a * ((oc * oc).sum() - 1.0)
    t_hit = (-half_b - np.sqrt(np.maximum(disc, 0.0))) / a
    t = np.where((disc > 0) & (t_hit > _NEAR), t_hit, np.inf)

    def normal(mask: np.ndarray) -> np.ndarray:
        p = oc + t[mask][:, None] * dd[mask]
        n = p / radii
        return n / np.linalg.norm(n, axis=-1, keepdims=True)

    return t, normal


@dataclass
class _Hits:
    depth: np.ndarray  # (H, W) z-depth in metres, inf where the ray escapes (sky)
    normal: np.ndarray  # (H, W, 3) unit world normal facing the camera, zeros for sky
    prim: np.ndarray  # (H, W) int primitive id, -1 for sky


def _cast_rays(scene: _Scene, pose: np.ndarray, K: np.ndarray, rays_cam: np.ndarray) -> _Hits:
    """Nearest hit per pixel over the road plane, boxes, cylinders and ellipsoids."""
    height, width = rays_cam.shape[:2]
    o = pose[:3, 3]
    d = rays_cam @ pose[:3, :3].T
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    inv_d = 1.0 / d
    depth = np.full((height, width), np.inf)
    normal = np.zeros((height, width, 3))
    prim = np.full((height, width), -1, dtype=np.int64)

    going_down = d[..., 2] < 0
    depth[going_down] = -o[2] / d[..., 2][going_down]
    normal[going_down] = (0.0, 0.0, 1.0)
    prim[going_down] = 0

    rects = _screen_rects(scene.aabbs, pose, K, height, width)
    kinds = [(scene.box_ids, scene.boxes, lambda sub_d, sl, g: _intersect_box(o, sub_d, inv_d[sl], g)),
             (scene.cylinder_ids, scene.cylinders, lambda sub_d, sl, g: _intersect_cylinder(o, sub_d, g)),
             (scene.ellipsoid_ids, scene.ellipsoids, lambda sub_d, sl, g: _intersect_ellipsoid(o, sub_d, g))]
    for first_id, geometry, intersect in kinds:
        for k, g in enumerate(geometry):
            v0, v1, u0, u1 = rects[first_id + k]
            if v1 <= v0 or u1 <= u0:
                continue
            sl = (slice(v0, v1), slice(u0, u1))
            t, normal_of = intersect(d[sl], sl, g)
            closer = t < depth[sl]
            if not closer.any():
                continue
            depth[sl][closer] = t[closer]
            normal[sl][closer] = normal_of(closer)
            prim[sl][closer] = first_id + k
    facing_away = (normal * d).sum(-1) > 0
    normal[facing_away] *= -1.0
    return _Hits(depth=depth, normal=normal, prim=prim)
