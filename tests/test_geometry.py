import math

import pytest
import torch
import torch.nn.functional as F

from mtlda.geometry import (
    backproject,
    crop_intrinsics,
    depth_to_disparity,
    disparity_to_depth,
    flip_intrinsics,
    median_scale,
    normals_from_depth,
    pixels_to_grid,
    pose_from_axis_angle,
    project,
    scale_intrinsics,
    transform_points,
    warp_frame,
)

H, W = 40, 64
# Off-centre principal point and non-square pixels.
FX, FY, CX, CY = 70.0, 55.0, 27.3, 22.6


def make_K(batch: int = 1, fx: float = FX, fy: float = FY, cx: float = CX, cy: float = CY) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]).expand(batch, 3, 3).clone()


def rays(K: torch.Tensor, h: int = H, w: int = W) -> torch.Tensor:
    """(3, H, W) rays with z = 1 through pixel centres, computed independently of the module."""
    v, u = torch.meshgrid(torch.arange(h, dtype=K.dtype), torch.arange(w, dtype=K.dtype), indexing="ij")
    k = K[0]
    return torch.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], torch.ones_like(u)])


def plane_depth(K: torch.Tensor, normal: torch.Tensor, offset: float, h: int = H, w: int = W) -> torch.Tensor:
    """(1, 1, H, W) depth of the plane n . P = -offset (n facing the camera); 0 where the ray misses it."""
    denom = torch.einsum("c,chw->hw", normal, rays(K, h, w))
    z = -offset / denom
    return torch.where(denom < -1e-6, z, torch.zeros_like(z))[None, None]


def interior(valid: torch.Tensor) -> torch.Tensor:
    return valid[0, 0]


@pytest.mark.parametrize(
    "normal",
    [
        torch.tensor([0.0, 0.0, -1.0]),  # fronto-parallel wall
        torch.tensor([0.0, -1.0, 0.0]),  # ground plane below the camera
        torch.tensor([0.35, -0.25, -0.9]),  # tilted plane
    ],
)
def test_normals_of_planes_are_exact(normal):
    K = make_K()
    n_true = normal / normal.norm()
    depth = plane_depth(K, n_true, offset=1.5)
    normals, valid = normals_from_depth(depth, K)
    assert valid.sum() > 0.3 * H * W
    err = (normals[0][:, interior(valid)] - n_true[:, None]).abs().max()
    assert err < 1e-3
    # Camera-facing: n . P < 0 on every valid pixel.
    points = backproject(depth, K)
    assert ((normals * points).sum(1)[valid[:, 0]] < 0).all()
    # Borders are always invalid; invalid pixels carry zeros.
    assert not valid[..., 0, :].any() and not valid[..., -1, :].any()
    assert not valid[..., :, 0].any() and not valid[..., :, -1].any()
    assert (normals[:, :, ~valid[0, 0]] == 0).all()


def test_ground_plane_under_float32_is_exact_to_1e_3():
    K = make_K()
    depth = plane_depth(K, torch.tensor([0.0, -1.0, 0.0]), offset=1.6).float()
    normals, valid = normals_from_depth(depth, K.float())
    # Rows whose 3x3 neighbourhood touches missing depth (the horizon) are invalid; the rest is exact.
    assert valid[0, 0, int(CY) + 3 : -1, 1:-1].all()
    err = (normals[0][:, valid[0, 0]] - torch.tensor([0.0, -1.0, 0.0])[:, None]).abs().max()
    assert err < 1e-3


def test_flip_of_depth_and_K_negates_normal_x():
    K = make_K()
    depth = plane_depth(K, torch.tensor([0.4, -0.3, -0.85]) / torch.tensor([0.4, -0.3, -0.85]).norm(), 2.0)
    normals, valid = normals_from_depth(depth, K)
    flipped, valid_f = normals_from_depth(depth.flip(-1), flip_intrinsics(K, W))
    expected = normals.flip(-1) * torch.tensor([-1.0, 1.0, 1.0])[None, :, None, None]
    assert torch.equal(valid_f, valid.flip(-1))
    assert (flipped - expected)[:, :, valid_f[0, 0]].abs().max() < 1e-5


def test_crop_of_depth_and_K_gives_cropped_normals():
    K = make_K()
    depth = plane_depth(K, torch.tensor([-0.2, -0.5, -0.8]) / torch.tensor([-0.2, -0.5, -0.8]).norm(), 3.0)
    normals, valid = normals_from_depth(depth, K)
    top, left = 7, 11
    crop = depth[..., top : top + 20, left : left + 30]
    cropped, valid_c = normals_from_depth(crop, crop_intrinsics(K, top, left))
    ref = normals[..., top : top + 20, left : left + 30]
    both = valid_c[0, 0] & valid[0, 0, top : top + 20, left : left + 30]
    assert both.sum() == 18 * 28
    assert (cropped - ref)[:, :, both].abs().max() < 1e-5


def test_depth_discontinuity_is_masked():
    K = make_K()
    depth = torch.full((1, 1, H, W), 10.0)
    depth[..., :, 20:36] = 4.0  # a nearer wall in front of the far wall
    normals, valid = normals_from_depth(depth, K)
    row = valid[0, 0, 20]
    # Exactly the pixels whose 3x3 neighbourhood straddles an edge (columns 19|20 and 35|36) are masked.
    assert not row[19:21].any() and not row[35:37].any()
    assert row[1:19].all() and row[21:35].all() and row[37:-1].all()
    assert (normals[0, :, 20, 25] - torch.tensor([0.0, 0.0, -1.0])).abs().max() < 1e-5
    # A smaller jump below the threshold passes.
    _, valid_loose = normals_from_depth(depth, K, discontinuity_threshold=2.0)
    assert valid_loose[0, 0, 1:-1, 1:-1].all()


def test_missing_depth_and_mask_invalidate_neighbourhood():
    K = make_K()
    depth = torch.full((1, 1, H, W), 5.0)
    depth[0, 0, 10, 10] = 0.0
    mask = torch.ones_like(depth, dtype=torch.bool)
    mask[0, 0, 30, 40] = False
    normals, valid = normals_from_depth(depth, K, mask)
    assert not valid[0, 0, 9:12, 9:12].any() and not valid[0, 0, 29:32, 39:42].any()
    assert valid.sum() == (H - 2) * (W - 2) - 18
    assert torch.isfinite(normals).all()


def test_normals_batch_of_three_uses_channel_cross_product():
    K = make_K(3)
    depth = torch.cat([plane_depth(K, torch.tensor([0.0, 0.0, -1.0]), z) for z in (2.0, 3.0, 4.0)])
    normals, valid = normals_from_depth(depth, K)
    assert (normals[:, :, valid[0, 0]] - torch.tensor([0.0, 0.0, -1.0])[None, :, None]).abs().max() < 1e-6


def test_normals_reject_bad_shapes():
    with pytest.raises(ValueError, match="depth"):
        normals_from_depth(torch.ones(1, H, W), make_K())
    with pytest.raises(ValueError, match="K"):
        normals_from_depth(torch.ones(1, 1, H, W), torch.eye(3))


def test_scale_intrinsics_maps_pixel_centres_like_interpolate():
    K = make_K()
    # A point projected at (u, v) in the original image lands at (u + 0.5) * s - 0.5 after resizing.
    K2 = scale_intrinsics(K, 0.5, 0.25)
    point = torch.tensor([0.3, -0.2, 2.0])
    uv = K[0] @ point / point[2]
    uv2 = K2[0] @ point / point[2]
    assert torch.allclose(uv2[0], (uv[0] + 0.5) * 0.5 - 0.5)
    assert torch.allclose(uv2[1], (uv[1] + 0.5) * 0.25 - 0.5)
    # Consistency with F.interpolate: downsampling a one-hot image by 2 with area averaging keeps the mass
    # centred where the formula says.
    img = torch.zeros(1, 1, 8, 8)
    img[..., 4:6, 2:4] = 1.0  # covers pixel centres u in {2, 3}: centre 2.5
    small = F.interpolate(img, scale_factor=0.5, mode="bilinear", align_corners=False)
    cols = torch.arange(4.0)
    centre = (small[0, 0].sum(0) * cols).sum() / small[0, 0].sum()
    assert math.isclose(centre.item(), (2.5 + 0.5) * 0.5 - 0.5)


def test_scale_intrinsics_per_batch_factors():
    K = make_K(2)
    out = scale_intrinsics(K, torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.5]))
    assert torch.equal(out[0], K[0])
    assert torch.allclose(out[1], torch.tensor([[140.0, 0, 55.1], [0, 27.5, 11.05], [0, 0, 1]]))


def test_crop_and_flip_intrinsics():
    K = make_K()
    c = crop_intrinsics(K, top=5, left=9)
    assert torch.allclose(c[0, :2, 2], torch.tensor([CX - 9, CY - 5]))
    assert torch.equal(c[0, :2, :2], K[0, :2, :2])
    f = flip_intrinsics(K, W)
    assert torch.allclose(f[0, 0, 2], torch.tensor(W - 1 - CX))
    assert f[0, 1, 2] == CY and f[0, 0, 0] == FX and f[0, 1, 1] == FY
    assert torch.allclose(flip_intrinsics(f, W), K)


def test_flip_intrinsics_matches_mirrored_projection():
    K = make_K()
    point = torch.tensor([0.7, 0.1, 3.0])
    u = (K[0] @ point / point[2])[0]
    mirrored = torch.tensor([-0.7, 0.1, 3.0])
    u_flip = (flip_intrinsics(K, W)[0] @ mirrored / mirrored[2])[0]
    assert torch.allclose(u_flip, W - 1 - u)


def test_disparity_depth_round_trip_and_invalid():
    disp = torch.tensor([[[[10.0, 0.0], [-1.0, 2.5]]]])
    depth = disparity_to_depth(disp, baseline=0.2, fx=500.0)
    assert torch.allclose(depth, torch.tensor([[[[10.0, 0.0], [0.0, 40.0]]]]))
    back = depth_to_disparity(depth, 0.2, 500.0)
    assert torch.allclose(back, torch.tensor([[[[10.0, 0.0], [0.0, 2.5]]]]))
    per_image = disparity_to_depth(torch.ones(2, 1, 1, 1), torch.tensor([1.0, 2.0]), torch.tensor([3.0, 3.0]))
    assert per_image.flatten().tolist() == [3.0, 6.0]


def test_median_scale_recovers_gt():
    gt = torch.rand(2, 1, 6, 7) * 20 + 1
    mask = torch.rand(2, 1, 6, 7) > 0.3
    pred = gt * torch.tensor([0.1, 3.0]).reshape(2, 1, 1, 1)
    pred_garbage = torch.where(mask, pred, torch.full_like(pred, 1e6))
    out = median_scale(pred_garbage, gt, mask)
    assert torch.allclose(out[mask], gt[mask], rtol=1e-5)
    empty = median_scale(pred, gt, torch.zeros_like(mask))
    assert torch.equal(empty, pred)


def test_backproject_project_round_trip():
    K = make_K(2)
    depth = torch.rand(2, 1, H, W) * 10 + 0.5
    points = backproject(depth, K)
    assert torch.allclose(points[:, 2:], depth)
    assert torch.allclose(points[0], rays(K) * depth[0], atol=1e-5)
    pix = project(points, K)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    assert torch.allclose(pix[..., 0], u.expand(2, H, W), atol=1e-3)
    assert torch.allclose(pix[..., 1], v.expand(2, H, W), atol=1e-3)


def test_pose_from_axis_angle_and_inverse():
    aa = torch.tensor([[0.0, 0.0, math.pi / 2], [0.1, -0.2, 0.3]])
    t = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -0.5]])
    T = pose_from_axis_angle(aa, t)
    assert torch.allclose(T[0, :3, :3], torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6)
    assert torch.allclose(T[:, :3, 3], t)
    T_inv = pose_from_axis_angle(aa, t, invert=True)
    assert torch.allclose(T @ T_inv, torch.eye(4).expand(2, 4, 4), atol=1e-6)
    points = torch.randn(2, 3, 4, 5)
    moved = transform_points(T, points)
    expected = torch.einsum("bij,bjhw->bihw", T[:, :3, :3], points) + t[:, :, None, None]
    assert torch.allclose(moved, expected, atol=1e-5)


def test_pixels_to_grid_edges():
    pix = torch.tensor([[[[-0.5, -0.5], [W - 0.5, H - 0.5], [(W - 1) / 2, (H - 1) / 2]]]])
    grid = pixels_to_grid(pix, H, W)
    assert torch.allclose(grid, torch.tensor([[[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]]]))


def textured(batch: int = 1) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    img = torch.stack([torch.sin(u * 0.4) + torch.cos(v * 0.3), torch.sin(u * 0.15 + v * 0.2), u / W])
    return img.expand(batch, 3, H, W).clone()


def test_warp_frame_identity_pose_is_identity():
    K = make_K(2)
    img = textured(2)
    depth = torch.rand(2, 1, H, W) * 5 + 1
    warped, valid = warp_frame(img, depth, torch.eye(4).expand(2, 4, 4), K)
    assert torch.allclose(warped, img, atol=1e-4)
    assert valid.all()


def test_warp_frame_pure_translation_of_a_wall_shifts_the_image():
    K = make_K()
    z, shift_px = 4.0, 3
    tx = shift_px * z / FX  # source camera sits tx to the left: target points appear shift_px further right
    T = torch.eye(4)[None].clone()
    T[0, 0, 3] = tx
    img = textured()
    depth = torch.full((1, 1, H, W), z)
    warped, valid = warp_frame(img, depth, T, K)
    # target pixel u samples source pixel u + shift_px
    assert torch.allclose(warped[..., : W - shift_px], img[..., shift_px:], atol=1e-4)
    assert valid[..., : W - shift_px].all()
    assert not valid[..., W - shift_px + 1 :].any()
    # border padding repeats the last column
    assert torch.allclose(warped[..., -1], img[..., -1], atol=1e-4)
    zeros, _ = warp_frame(img, depth, T, K, padding="zeros")
    assert zeros[..., -1].abs().max() == 0


def test_warp_frame_marks_points_behind_source_and_missing_depth():
    K = make_K()
    T = torch.eye(4)[None].clone()
    T[0, 2, 3] = -5.0  # move the source camera 5 m forward, past the wall at 2 m
    depth = torch.full((1, 1, H, W), 2.0)
    depth[..., 0, 0] = 0.0
    _, valid = warp_frame(textured(), depth, T, K)
    assert not valid.any()
    _, valid_id = warp_frame(textured(), depth, torch.eye(4)[None], K)
    assert not valid_id[0, 0, 0, 0] and valid_id.sum() == H * W - 1


def test_normals_of_noisy_depth_all_face_the_camera():
    # Rough depth flips some raw cross products away from the camera; every returned normal must still face it.
    K = make_K()
    depth = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(0)) + 1
    normals, valid = normals_from_depth(depth, K, discontinuity_threshold=1e9)
    facing = (normals * backproject(depth, K)).sum(1)[valid[:, 0]]
    assert valid.sum() == (H - 2) * (W - 2) and (facing < 0).all()
    assert torch.allclose(normals.norm(dim=1)[valid[:, 0]], torch.ones(int(valid.sum())), atol=1e-5)
