"""toycity shading: the colours of the four styles, from ray hits, class labels and scene materials.

``"flat"``: one saturated colour per class, mild Lambertian shading. ``"tinted"``: each object's own base colour
(the textured style's, drawn per object around its class's natural palette: grey asphalt, green foliage, car
paints), the flat style's shading and a plain sky: natural colours without textures, lighting or noise, as a
simple synthetic renderer gives. ``"synthetic"``: the textured style's materials and textures as a game engine
renders them (the source domain of toycity's adaptation benchmark, as Synthia is to Cityscapes): a fixed high sun
with flat ambient light, a cloudless gradient sky, no fog, no camera response or noise, vivid tone mapping.
``"textured"``: procedural textures per class (asphalt and lane markings, paving slabs, facades with windows, sign
plates, foliage, clothes, car paint and glass), a low sun and sky light, distance fog, a warm colour shift and
sensor noise.

Shading functions return values per ray; :mod:`~mtlda.data.toycity.render` averages the rays of a pixel's
footprint where a style has one (``PIXEL_SAMPLES``).
"""

from __future__ import annotations

import numpy as np

from mtlda.data.toycity.raycast import Hits
from mtlda.data.toycity.scene import (
    BUILDING,
    BUILDING_PATTERNS,
    CAR,
    METAL,
    PARKING_LANE,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SIGN,
    VEGETATION,
    Scene,
)


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
_TINTED_SKY = np.array([0.6, 0.72, 0.9])


def _flat_shading(hits: Hits) -> np.ndarray:
    """(H, W, 1) mild Lambertian factor in [0.75, 1] on hit pixels, 1 on the sky."""
    lambert = np.clip(hits.normal @ _FLAT_SUN, 0.0, 1.0)
    return np.where(hits.prim >= 0, 0.75 + 0.25 * lambert, 1.0)[..., None]


def shade_flat(labels: np.ndarray, hits: Hits) -> np.ndarray:
    """(H, W, 3) float RGB: one saturated colour per class, mild Lambertian shading."""
    return _FLAT_COLOURS[labels] * _flat_shading(hits)


def shade_tinted(scene: Scene, hits: Hits) -> np.ndarray:
    """(H, W, 3) float RGB: each object's base colour (``scene.tints``) with mild Lambertian shading, a plain sky."""
    hit = hits.prim >= 0
    base = np.where(hit[..., None], scene.tints[np.maximum(hits.prim, 0)], _TINTED_SKY)
    return base * _flat_shading(hits)


def _road_albedo(scene: Scene, p: np.ndarray, tint: np.ndarray, accent: np.ndarray) -> np.ndarray:
    """Asphalt noise with a dashed centre line and solid lines along the parking lanes."""
    grain = 0.1 * _value_noise(p[:, 0] / 0.8, p[:, 1] / 0.8, 11) + 0.08 * _hash01(
        np.floor(p[:, 0] * 25), np.floor(p[:, 1] * 25), salt=12) - 0.09
    colour = tint + grain[:, None]
    x = np.abs(p[:, 0])
    marking = ((x < 0.08) & (_frac(p[:, 1] / 9.0) < 0.45)) | (
        np.abs(x - (scene.road_half_width - PARKING_LANE)) < 0.07)
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
    brick = pattern == BUILDING_PATTERNS.index("brick")
    row = np.floor(z / 0.3)
    mortar = (_frac(z / 0.3) < 0.12) | (_frac((along + 0.3 * (row % 2)) / 0.6) < 0.06)
    colour[brick & mortar] = 0.8 * colour[brick & mortar] + 0.15
    glass_wall = pattern == BUILDING_PATTERNS.index("glass")
    window = np.where(glass_wall, (_frac(along / 1.5) < 0.88) & (_frac(z / 3.5) < 0.72),
                      (_frac(along / 2.6) > 0.25) & (_frac(along / 2.6) < 0.72) & (_frac(z / 3.2) > 0.3)
                      & (_frac(z / 3.2) < 0.8))
    shop = pattern == BUILDING_PATTERNS.index("shopfront")
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
    return np.where((n[:, 1] < -0.5)[:, None], colour, np.array(METAL))


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


def _sky_gradient(d: np.ndarray, horizon: np.ndarray, zenith: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) cloudless sky, horizon to zenith, and (N,) elevation in [0, 1], from world ray directions (N, 3)."""
    elevation = np.clip(d[:, 2] / np.linalg.norm(d, axis=-1), 0.0, 1.0)
    return horizon + (zenith - horizon) * np.sqrt(elevation)[:, None], elevation


def _sky_colour(d: np.ndarray, horizon: np.ndarray, zenith: np.ndarray, salt: int) -> np.ndarray:
    """(N, 3) sky: horizon-to-zenith gradient with soft clouds, from world ray directions (N, 3)."""
    colour, elevation = _sky_gradient(d, horizon, zenith)
    height = np.maximum(d[:, 2], 1e-3)
    cloud = _value_noise(d[:, 0] / height * 2.0, d[:, 1] / height * 2.0, salt)
    cloud = np.clip((cloud - 0.55) * 3.0, 0.0, 1.0) * np.clip(elevation * 8.0, 0.0, 1.0)
    return colour + (0.95 - colour) * cloud[:, None]


def _textured_albedo(scene: Scene, labels: np.ndarray, points: np.ndarray, hits: Hits) -> np.ndarray:
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


def _world_rays_and_albedo(scene: Scene, labels: np.ndarray, hits: Hits, pose: np.ndarray,
                           rays_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World ray directions (H, W, 3), the hit mask (H, W) and the textured albedo (N, 3) of the N hit rays."""
    d = rays_cam @ pose[:3, :3].T
    hit = hits.prim >= 0
    points = pose[:3, 3] + hits.depth[hit][:, None] * d[hit]
    return d, hit, _textured_albedo(scene, labels[hit], points, hits)


def shade_textured(scene: Scene, labels: np.ndarray, hits: Hits, pose: np.ndarray, rays_cam: np.ndarray) -> np.ndarray:
    """(H, W, 3) float linear radiance: textures, low sun + sky light, distance fog (before the camera's
    response, :func:`camera_response`)."""
    d, hit, albedo = _world_rays_and_albedo(scene, labels, hits, pose, rays_cam)
    horizon, zenith = np.array([0.82, 0.8, 0.74]), np.array([0.3, 0.45, 0.75])
    rgb = np.empty(labels.shape + (3,))
    rgb[~hit] = _sky_colour(d[~hit], horizon, zenith, salt=61)
    n = hits.normal[hit]
    light = 0.28 + 0.12 * n[:, 2] + 0.9 * np.clip(n @ scene.sun_textured, 0.0, 1.0)
    distance = hits.depth[hit] * np.linalg.norm(d[hit], axis=-1)
    fog = 1.0 - np.exp(-distance / 220.0)
    rgb[hit] = albedo * light[:, None] * (1 - fog[:, None]) + horizon * fog[:, None]
    return rgb


_SYNTHETIC_SUN = np.array([0.3, -0.4, 0.87]) / np.linalg.norm([0.3, -0.4, 0.87])
_SYNTHETIC_HORIZON, _SYNTHETIC_ZENITH = np.array([0.65, 0.82, 1.0]), np.array([0.15, 0.4, 0.95])


def shade_synthetic(scene: Scene, labels: np.ndarray, hits: Hits, pose: np.ndarray,
                    rays_cam: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB as a game engine renders the textured style's materials: the same textures, a fixed
    high sun with flat ambient light, a cloudless gradient sky, no fog, and vivid tone mapping (saturation x1.5)."""
    d, hit, albedo = _world_rays_and_albedo(scene, labels, hits, pose, rays_cam)
    rgb = np.empty(labels.shape + (3,))
    rgb[~hit] = _sky_gradient(d[~hit], _SYNTHETIC_HORIZON, _SYNTHETIC_ZENITH)[0]
    light = 0.55 + 0.6 * np.clip(hits.normal[hit] @ _SYNTHETIC_SUN, 0.0, 1.0)
    rgb[hit] = albedo * light[:, None]
    grey = rgb.mean(-1, keepdims=True)
    return grey + 1.5 * (rgb - grey)


def camera_response(scene: Scene, radiance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float RGB of the textured style's camera from pixel radiance (H, W, 3): per-channel gain (warm
    colour shift), a 0.9 response exponent and sensor noise (std 0.02) drawn from ``rng``."""
    rgb = np.maximum(radiance * scene.camera_response, 0.0) ** 0.9
    return rgb + rng.normal(0.0, 0.02, rgb.shape)
