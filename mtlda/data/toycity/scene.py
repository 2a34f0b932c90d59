"""toycity scene layout: the street geometry and materials of one scene index, and the renderer's conventions.

World frame: X right across the street, Y forward along the street, Z up; the road surface is the plane Z = 0
and the camera sits at Z = ``CAMERA_HEIGHT``. A scene is drawn from one ``np.random.Generator``; the order of the
draws defines the data set (changing it changes every image: bump ``GENERATOR_VERSION``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

CLASS_NAMES = ("road", "sidewalk", "building", "pole", "traffic sign", "vegetation", "sky", "person", "car")
CITYSCAPES_LABEL_IDS = (7, 8, 11, 17, 20, 21, 23, 24, 26)
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = range(len(CLASS_NAMES))

CAMERA_HEIGHT = 1.5  # metres above the road surface
MAX_DEPTH = 150.0  # hits farther than this (z-depth, metres) are invalid: depth 0, valid False
MAX_ABS_OFFSET = 30  # frame offsets are limited to [-30, 30] around the sample's centre frame

PARKING_LANE = 2.2  # width of the parking lane along each curb (metres)
_SCENE_BEGIN = -(MAX_ABS_OFFSET * 1.25 + 10.0)  # Y range of the street (metres)
_SCENE_END_OBJECTS = MAX_ABS_OFFSET * 1.25 + MAX_DEPTH + 10.0
_SCENE_END_BUILDINGS = _SCENE_END_OBJECTS + 250.0
_FAR = 1.0e4  # half extent of the "infinite" sidewalk slabs


@dataclass
class Scene:
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


def street_layout(rng: np.random.Generator) -> Scene:
    """Draw one street: road, curbs, sidewalks, buildings, poles, signs, trees, hedges, cars, persons."""
    half = float(rng.uniform(4.8, 6.8))
    walk = float(rng.uniform(3.5, 6.0))
    curb = float(rng.uniform(0.12, 0.2))
    lane_x = (half - PARKING_LANE) / 2.0
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
        _place_cars(b, side * (half - PARKING_LANE / 2.0), 0.35)
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
    return Scene(
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
BUILDING_PATTERNS = ("windows", "brick", "glass", "shopfront")


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
              _Material(b.pick(_FACADES, 0.06), b.pick(_GLASS, 0.03), int(rng.integers(len(BUILDING_PATTERNS)))))
        y += length
    y = _SCENE_BEGIN
    while y < _SCENE_END_BUILDINGS:
        length = rng.uniform(15.0, 40.0)
        x0 = front + rng.uniform(24.0, 34.0)
        xs = sorted((side * x0, side * (x0 + 10.0)))
        b.box((xs[0], y, ground), (xs[1], y + length, ground + rng.uniform(8.0, 22.0)), BUILDING,
              _Material(b.pick(_FACADES, 0.06), b.pick(_GLASS, 0.03), int(rng.integers(len(BUILDING_PATTERNS)))))
        y += length


_SIGN_FACES = ((0.85, 0.12, 0.1), (0.1, 0.3, 0.8), (0.95, 0.8, 0.1), (0.92, 0.92, 0.9))
METAL = (0.45, 0.46, 0.48)


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
        b.cylinder(x, y, radius, ground, top, POLE, _Material(b.colour(METAL, 0.08), b.colour(METAL, 0.1)))
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
