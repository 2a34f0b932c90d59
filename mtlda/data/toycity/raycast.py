"""toycity camera model and ray casting: intrinsics, camera poses along the street, nearest hits with the road
plane, boxes, vertical cylinders and ellipsoids.

Pixel conventions follow ``mtlda.geometry``: pixel centres at integer (u, v), ``K = [[fx, 0, cx], [0, fy, cy],
[0, 0, 1]]``; camera frame x right, y down, z forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mtlda.data.toycity.scene import CAMERA_HEIGHT, Scene

HORIZONTAL_FOV_DEG = 90.0

_NEAR = 0.05  # minimum hit distance along the ray (z-depth, metres)


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


def camera_pose(scene: Scene, offset: int) -> np.ndarray:
    """(4, 4) float64 cam_to_world of the frame at ``offset``: smooth yaw/pitch/roll/lateral perturbations
    (sums of two sinusoids of the offset, so consecutive frames differ by a fraction of a degree)."""
    yaw, pitch, roll, lateral = (sum(a * math.sin(f * offset + p) for a, f, p in harmonics.tolist())
                                 for harmonics in scene.motion)
    pose = np.eye(4)
    pose[:3, :3] = _CAMERA_AXES_IN_WORLD @ _rotation(1, yaw) @ _rotation(0, pitch) @ _rotation(2, roll)
    pose[:3, 3] = (scene.lane_x + lateral, scene.step * offset, CAMERA_HEIGHT)
    return pose


def camera_rays(K: np.ndarray, height: int, width: int, samples: int = 1) -> np.ndarray:
    """(samples H, samples W, 3) camera-frame ray directions with z = 1, so that the ray parameter is the
    z-depth: a ``samples`` x ``samples`` grid of rays spread evenly over each pixel's footprint (``samples`` odd),
    whose centre ray is the pixel centre's ray exactly (bit for bit the ray of ``samples = 1``)."""
    if samples < 1 or samples % 2 == 0:
        raise ValueError(f"camera_rays needs an odd number of samples per pixel side, got {samples}")
    offsets = (np.arange(samples) - samples // 2) / samples
    u = (np.arange(width, dtype=np.float64)[:, None] + offsets).reshape(-1)
    v = (np.arange(height, dtype=np.float64)[:, None] + offsets).reshape(-1)
    v, u = np.meshgrid(v, u, indexing="ij")
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)


def supersampled_camera(K: np.ndarray, samples: int) -> np.ndarray:
    """(3, 3) intrinsics of the grid of :func:`camera_rays` with ``samples`` rays per pixel side, in which ray
    (samples v + i, samples u + j) has the pixel coordinates (v + (i - samples // 2) / samples, u + ...)."""
    scale = np.diag([samples, samples, 1.0])
    shift = np.array([[0.0, 0.0, samples // 2], [0.0, 0.0, samples // 2], [0.0, 0.0, 0.0]])
    return scale @ K + shift


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
class Hits:
    depth: np.ndarray  # (H, W) z-depth in metres, inf where the ray escapes (sky)
    normal: np.ndarray  # (H, W, 3) unit world normal facing the camera, zeros for sky
    prim: np.ndarray  # (H, W) int primitive id, -1 for sky


def cast_rays(scene: Scene, pose: np.ndarray, K: np.ndarray, rays_cam: np.ndarray) -> Hits:
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
    return Hits(depth=depth, normal=normal, prim=prim)
