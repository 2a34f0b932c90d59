"""Pinhole camera geometry, batched and device-agnostic, built on Kornia.

Conventions (shared by the whole project):

* ``K`` is (B, 3, 3) ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels of the image it belongs to.
  u is the column, v the row, and pixel centres lie at integer coordinates (the centre of pixel (0, 0) is
  u = 0, v = 0). Depth is z-depth in metres; camera frame x right, y down, z forward.
* Resizing W -> W' maps u -> (u + 0.5) * W'/W - 0.5 (the ``align_corners=False`` convention of
  ``F.interpolate`` and ``grid_sample``), so fx' = fx * sx and cx' = (cx + 0.5) * sx - 0.5.
* Normal maps face the camera: n . P < 0 for the back-projected point P (a fronto-parallel wall is (0, 0, -1),
  the ground below the camera (0, -1, 0)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from kornia.geometry.camera import project_points
from kornia.geometry.conversions import Rt_to_matrix4x4, axis_angle_to_rotation_matrix
from kornia.geometry.depth import depth_to_3d_v2
from kornia.geometry.linalg import transform_points as kornia_transform_points
from torch import Tensor

from mtlda.constants import SDE_MAX_DEPTH, SDE_MIN_DEPTH

# Points closer than this (metres, along z) count as behind the camera when projecting.
_MIN_PROJECTION_DEPTH = 1e-6

# Smallest vector length ``unit_vectors`` divides by (``F.normalize``'s default).
UNIT_VECTOR_EPS = 1e-12

# Default relative inverse-depth deviation from local planarity above which a pixel is a depth discontinuity.
DEFAULT_DISCONTINUITY_THRESHOLD = 0.05


def unit_vectors(x: Tensor, dim: int = 1, eps: float = UNIT_VECTOR_EPS) -> Tensor:
    """x / max(||x||_2, eps) along ``dim``: the values and gradient of ``F.normalize(x, dim=dim, eps=eps)``.

    Any shape, computed in x's dtype as a sum of squares and a square root (clamped at eps^2, so a zero vector
    stays zero with a finite gradient). On the CPU this is about 50x faster than ``F.normalize``, whose norm
    kernel is slow for a reduction over the channels of a (B, C, H, W) map.
    """
    squared = x.square().sum(dim=dim, keepdim=True)
    return x / squared.clamp_min(eps * eps).sqrt()


def _check_K(K: Tensor) -> None:
    if K.ndim != 3 or K.shape[-2:] != (3, 3):
        raise ValueError(f"K must have shape (B, 3, 3), got {tuple(K.shape)}")


def _check_map(x: Tensor, channels: int, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")


def _per_batch(value: float | Tensor, like: Tensor) -> Tensor:
    """A scalar or (B,) value as a (B,) tensor on ``like``'s device and dtype."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.expand(like.shape[0]) if t.ndim == 0 else t


def scale_intrinsics(K: Tensor, sx: float | Tensor, sy: float | Tensor) -> Tensor:
    """K (B, 3, 3) of an image resized by sx = W'/W, sy = H'/H (``align_corners=False`` pixel-centre convention).

    fx' = fx * sx, cx' = (cx + 0.5) * sx - 0.5, and the same in y. ``sx``/``sy`` are floats or (B,) tensors.
    """
    _check_K(K)
    sx_t, sy_t = _per_batch(sx, K), _per_batch(sy, K)
    out = K.clone()
    out[:, 0, 0] = K[:, 0, 0] * sx_t
    out[:, 1, 1] = K[:, 1, 1] * sy_t
    out[:, 0, 2] = (K[:, 0, 2] + 0.5) * sx_t - 0.5
    out[:, 1, 2] = (K[:, 1, 2] + 0.5) * sy_t - 0.5
    return out


def crop_intrinsics(K: Tensor, top: int | Tensor, left: int | Tensor) -> Tensor:
    """K (B, 3, 3) of the crop whose top-left pixel is (row ``top``, column ``left``): cx -= left, cy -= top."""
    _check_K(K)
    out = K.clone()
    out[:, 0, 2] = K[:, 0, 2] - _per_batch(left, K)
    out[:, 1, 2] = K[:, 1, 2] - _per_batch(top, K)
    return out


def flip_intrinsics(K: Tensor, width: int | Tensor) -> Tensor:
    """K (B, 3, 3) of the horizontally mirrored image of ``width`` pixels: cx' = W - 1 - cx; fx, fy, cy unchanged.

    The matching normal map must also have its x component negated.
    """
    _check_K(K)
    out = K.clone()
    out[:, 0, 2] = _per_batch(width, K) - 1 - K[:, 0, 2]
    return out


def _as_image_tensor(value: float | Tensor, like: Tensor) -> Tensor:
    """A scalar or (B,) value broadcastable against a (B, 1, H, W) map."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1, 1, 1) if t.ndim == 1 else t


def _baseline_focal_over(x: Tensor, baseline: float | Tensor, fx: float | Tensor, name: str) -> Tensor:
    """baseline * fx / x for x (B, 1, H, W), 0 where x <= 0; baseline and fx are scalars or (B,) tensors."""
    _check_map(x, 1, name)
    positive = x > 0
    scale = _as_image_tensor(baseline, x) * _as_image_tensor(fx, x)
    return torch.where(positive, scale / torch.where(positive, x, torch.ones_like(x)), torch.zeros_like(x))


def disparity_to_depth(disp: Tensor, baseline: float | Tensor, fx: float | Tensor) -> Tensor:
    """Depth (B, 1, H, W) metres = baseline * fx / disparity; 0 where disparity <= 0 (invalid).

    disp (B, 1, H, W) in pixels of the image ``fx`` belongs to; baseline in metres; scalars or (B,) tensors.
    """
    return _baseline_focal_over(disp, baseline, fx, "disp")


def depth_to_disparity(depth: Tensor, baseline: float | Tensor, fx: float | Tensor) -> Tensor:
    """Disparity (B, 1, H, W) pixels = baseline * fx / depth; 0 where depth <= 0 (invalid)."""
    return _baseline_focal_over(depth, baseline, fx, "depth")


def disp_to_depth(disp: Tensor, min_depth: float = SDE_MIN_DEPTH, max_depth: float = SDE_MAX_DEPTH) -> tuple[Tensor, Tensor]:
    """Map a sigmoid output in [0, 1] linearly to disparity in [1/max_depth, 1/min_depth].

    disp: any shape, values in [0, 1]. Returns ``(scaled_disp, depth)`` of the same shape, depth = 1 / scaled_disp
    in metres, within [min_depth, max_depth].
    """
    if not 0.0 < min_depth < max_depth:
        raise ValueError(f"need 0 < min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    return scaled_disp, 1.0 / scaled_disp


def median_scale(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """pred (B, 1, H, W) times s = median(gt[mask]) / median(pred[mask]), per image.

    Medians are the lower median of an even count (``torch.nanmedian``). Images without a valid pixel, or whose
    masked prediction has a median <= 0, keep s = 1.
    """
    _check_map(pred, 1, "pred")
    if gt.shape != pred.shape or mask.shape != pred.shape:
        raise ValueError(
            f"pred, gt and mask must share one shape, got {tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(mask.shape)}"
        )
    nan = torch.full_like(pred, float("nan"))
    med_pred = torch.where(mask, pred, nan).flatten(1).nanmedian(dim=1).values
    med_gt = torch.where(mask, gt, nan).flatten(1).nanmedian(dim=1).values
    usable = torch.isfinite(med_pred) & torch.isfinite(med_gt) & (med_pred > 0)
    scale = torch.where(usable, med_gt / torch.where(usable, med_pred, torch.ones_like(med_pred)), 1.0)
    return pred * scale.reshape(-1, 1, 1, 1).detach()


def backproject(depth: Tensor, K: Tensor) -> Tensor:
    """Camera-frame points (B, 3, H, W) metres of depth (B, 1, H, W) metres with intrinsics K (B, 3, 3)."""
    _check_map(depth, 1, "depth")
    _check_K(K)
    return depth_to_3d_v2(depth[:, 0], K.to(depth.dtype)).permute(0, 3, 1, 2)


def project(points: Tensor, K: Tensor) -> Tensor:
    """Pixel coordinates (B, H, W, 2) as (u, v) of camera-frame points (B, 3, H, W) with intrinsics K (B, 3, 3).

    Points with z <= 0 give meaningless coordinates; callers mask them with ``points[:, 2] > 0``.
    """
    _check_map(points, 3, "points")
    _check_K(K)
    b, _, h, w = points.shape
    z = points[:, 2:3]
    safe = torch.where(z.abs() < _MIN_PROJECTION_DEPTH, torch.full_like(z, _MIN_PROJECTION_DEPTH), z)
    points = torch.cat([points[:, :2], safe], dim=1)
    flat = points.permute(0, 2, 3, 1).reshape(b, h * w, 3)
    return project_points(flat, K.to(points.dtype)[:, None]).reshape(b, h, w, 2)


def transform_points(T: Tensor, points: Tensor) -> Tensor:
    """Points (B, 3, H, W) mapped by the rigid transforms T (B, 4, 4): p' = R p + t."""
    _check_map(points, 3, "points")
    if T.ndim != 3 or T.shape[-2:] != (4, 4):
        raise ValueError(f"T must have shape (B, 4, 4), got {tuple(T.shape)}")
    b, _, h, w = points.shape
    flat = points.permute(0, 2, 3, 1).reshape(b, h * w, 3)
    return kornia_transform_points(T.to(points.dtype), flat).reshape(b, h, w, 3).permute(0, 3, 1, 2)


def pose_from_axis_angle(axis_angle: Tensor, translation: Tensor, invert: bool = False) -> Tensor:
    """Rigid transform (B, 4, 4) [R | t] from an axis-angle rotation (B, 3) radians and a translation (B, 3).

    With ``invert`` the inverse transform [R^T | -R^T t] is returned (Monodepth2's pose for the past frame).
    """
    if axis_angle.ndim != 2 or axis_angle.shape[1] != 3 or translation.shape != axis_angle.shape:
        raise ValueError(
            f"axis_angle and translation must both be (B, 3), got {tuple(axis_angle.shape)}, {tuple(translation.shape)}"
        )
    R = axis_angle_to_rotation_matrix(axis_angle)
    t = translation[..., None]
    if invert:
        R = R.transpose(1, 2)
        t = -R @ t
    return Rt_to_matrix4x4(R, t)


def pixels_to_grid(pixels: Tensor, height: int, width: int) -> Tensor:
    """Pixel coordinates (B, H, W, 2) (u, v) as ``grid_sample`` coordinates for ``align_corners=False``.

    x = (2u + 1) / W - 1, y = (2v + 1) / H - 1: the image's outer edges map to -1 and +1.
    """
    size = pixels.new_tensor([width, height])
    return (2 * pixels + 1) / size - 1


def warp_frame(
    src_image: Tensor, depth_tgt: Tensor, T_tgt_to_src: Tensor, K: Tensor, padding: str = "border"
) -> tuple[Tensor, Tensor]:
    """Source frame resampled into the target view (view synthesis).

    src_image (B, C, H, W), depth_tgt (B, 1, H, W) metres of the target view, T_tgt_to_src (B, 4, 4) maps
    target-frame points into the source frame, K (B, 3, 3) shared by both views. Bilinear ``grid_sample`` with
    ``align_corners=False`` and ``padding`` ("border", "zeros" or "reflection").

    Returns (warped (B, C, H, W), valid (B, 1, H, W) bool): valid where the target depth is positive and the
    point lands in front of the source camera, inside the source image extent [-0.5, W - 0.5] x [-0.5, H - 0.5].
    """
    _check_map(depth_tgt, 1, "depth_tgt")
    if src_image.ndim != 4 or src_image.shape[0] != depth_tgt.shape[0] or src_image.shape[-2:] != depth_tgt.shape[-2:]:
        raise ValueError(
            f"src_image (B, C, H, W) must match depth_tgt (B, 1, H, W), got {tuple(src_image.shape)} "
            f"and {tuple(depth_tgt.shape)}"
        )
    h, w = depth_tgt.shape[-2:]
    points_src = transform_points(T_tgt_to_src, backproject(depth_tgt, K))
    pixels = project(points_src, K)
    warped = F.grid_sample(
        src_image, pixels_to_grid(pixels, h, w).to(src_image.dtype), mode="bilinear", padding_mode=padding,
        align_corners=False,
    )
    u, v = pixels[..., 0], pixels[..., 1]
    inside = (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
    in_front = points_src[:, 2] > _MIN_PROJECTION_DEPTH
    valid = inside & in_front & (depth_tgt[:, 0] > 0)
    return warped, valid[:, None]


# Neighbour offsets (dv, du) of the four cross-product bases, first x second, with +v pointing down:
# right x up, left x down, down-right x up-right, up-left x down-left. Each gives a camera-facing normal
# for a visible surface.
_NORMAL_BASES = (
    ((0, 1), (-1, 0)),
    ((0, -1), (1, 0)),
    ((1, 1), (-1, 1)),
    ((-1, -1), (1, -1)),
)
# The four lines through a pixel (horizontal, vertical, two diagonals) used by the discontinuity test.
_LINE_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _shifted(padded: Tensor, dv: int, du: int, h: int, w: int) -> Tensor:
    """Values at (v + dv, u + du) for every pixel of an (H, W) map padded by one pixel on each side."""
    return padded[..., 1 + dv : 1 + dv + h, 1 + du : 1 + du + w]


def normals_from_depth(
    depth: Tensor,
    K: Tensor,
    mask: Tensor | None = None,
    discontinuity_threshold: float = DEFAULT_DISCONTINUITY_THRESHOLD,
) -> tuple[Tensor, Tensor]:
    """Camera-facing unit surface normals of a metric depth map.

    depth (B, 1, H, W) metres (z-depth, <= 0 or non-finite = missing), K (B, 3, 3) of that resolution,
    mask (B, 1, H, W) bool of valid depth (None: depth > 0).

    Pixels are back-projected with K. At each pixel four normals are taken from cross products of the differences
    to its 8 neighbours (right x up, left x down, down-right x up-right, up-left x down-left), each normalised and
    oriented to face the camera (n . P < 0), then averaged and normalised again. This is exact on planes.

    A pixel is valid only if its whole 3x3 neighbourhood has valid depth (so image borders and the ring around
    missing depth are invalid) and it is not at a depth discontinuity. Discontinuity test: along each of the four
    lines through the pixel (horizontal, vertical, two diagonals) with neighbours a and b, the relative deviation
    of inverse depth from a straight line, |z/z_a + z/z_b - 2|, must not exceed ``discontinuity_threshold``. Inverse
    depth is affine in (u, v) on a plane, so planes pass at any viewing angle, while a 10 % depth jump scores about
    0.09. Neighbour differences use slicing, never wrap-around.

    Returns (normals (B, 3, H, W), zero where invalid; valid (B, 1, H, W) bool).
    """
    _check_map(depth, 1, "depth")
    _check_K(K)
    if discontinuity_threshold <= 0:
        raise ValueError(f"discontinuity_threshold must be positive, got {discontinuity_threshold}")
    if mask is not None and mask.shape != depth.shape:
        raise ValueError(f"mask must have the shape of depth {tuple(depth.shape)}, got {tuple(mask.shape)}")
    h, w = depth.shape[-2:]
    if h < 3 or w < 3:
        raise ValueError(f"normals need a depth map of at least 3x3 pixels, got {h}x{w}")

    has_depth = torch.isfinite(depth) & (depth > 0)
    if mask is not None:
        has_depth = has_depth & mask.bool()
    clean_depth = torch.where(has_depth, depth, torch.ones_like(depth))

    invalid = F.pad((~has_depth).to(depth.dtype), (1, 1, 1, 1), value=1.0)
    valid = F.max_pool2d(invalid, kernel_size=3, stride=1) == 0

    inv = F.pad(1.0 / clean_depth, (1, 1, 1, 1), mode="replicate")
    centre = _shifted(inv, 0, 0, h, w)
    for dv, du in _LINE_DIRECTIONS:
        bend = (_shifted(inv, dv, du, h, w) + _shifted(inv, -dv, -du, h, w)) / centre - 2
        valid = valid & (bend.abs() <= discontinuity_threshold)

    points = backproject(clean_depth, K)
    padded = F.pad(points, (1, 1, 1, 1), mode="replicate")
    centre_xyz = points.unbind(1)
    padded_xyz = padded.unbind(1)
    normal_sum = [torch.zeros_like(centre_xyz[0]) for _ in range(3)]
    for (dv1, du1), (dv2, du2) in _NORMAL_BASES:
        first = [_shifted(q, dv1, du1, h, w) - p for q, p in zip(padded_xyz, centre_xyz)]
        second = [_shifted(q, dv2, du2, h, w) - p for q, p in zip(padded_xyz, centre_xyz)]
        n = _unit_components(_cross(first, second))
        away = n[0] * centre_xyz[0] + n[1] * centre_xyz[1] + n[2] * centre_xyz[2] > 0
        normal_sum = [total + torch.where(away, -c, c) for total, c in zip(normal_sum, n)]
    normals = torch.stack(_unit_components(normal_sum), dim=1)
    normals = torch.where(valid, normals, torch.zeros_like(normals))
    return normals, valid


def _cross(a: Sequence[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
    """Components of a x b for 3-vectors given as three same-shaped component tensors each.

    Component i is fma(a_j, b_k, -(a_k * b_j)) through ``addcmul``: the rounding of ``torch.linalg.cross``'s CPU
    kernel, which is compiled with fused multiply-adds.
    """
    return [torch.addcmul(-(a[k] * b[j]), a[j], b[k]) for j, k in ((1, 2), (2, 0), (0, 1))]


def _unit_components(v: Sequence[Tensor], eps: float = UNIT_VECTOR_EPS) -> list[Tensor]:
    """Components of v / max(||v||, eps) for a 3-vector given as three same-shaped component tensors."""
    length = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).clamp_min(eps * eps).sqrt()
    return [c / length for c in v]
