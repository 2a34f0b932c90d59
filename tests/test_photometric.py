"""Monodepth2 photometric objective: analytic cases, a real stereo pair, and toycity sequences."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlda.data.toycity import render_sample
from mtlda.geometry import disp_to_depth, pose_from_axis_angle, warp_frame
from mtlda.losses.photometric import (
    SSIM_C1,
    SSIM_C2,
    PhotometricLoss,
    edge_aware_smoothness,
    reprojection_error,
    ssim_dissimilarity,
    synthesise_view,
)


def _K(batch: int, f: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]]).expand(batch, 3, 3).clone()


def _translation(tx: float, ty: float = 0.0, tz: float = 0.0, batch: int = 1) -> torch.Tensor:
    T = torch.eye(4).repeat(batch, 1, 1)
    T[:, :3, 3] = torch.tensor([tx, ty, tz])
    return T


def _depth_to_sigmoid_disp(depth: torch.Tensor, min_depth: float = 0.1, max_depth: float = 100.0) -> torch.Tensor:
    """Inverse of disp_to_depth; depth 0 (invalid, e.g. sky) becomes the farthest depth."""
    depth = torch.where(depth > 0, depth.clamp(min_depth, max_depth), torch.full_like(depth, max_depth))
    return (1 / depth - 1 / max_depth) / (1 / min_depth - 1 / max_depth)


# ------------------------------------------------------------------------------------------------ disparity


def test_disp_to_depth_maps_the_unit_interval_onto_the_depth_range():
    disp = torch.tensor([0.0, 0.25, 1.0])
    scaled, depth = disp_to_depth(disp, min_depth=0.1, max_depth=100.0)
    torch.testing.assert_close(depth[[0, 2]], torch.tensor([100.0, 0.1]))
    torch.testing.assert_close(scaled, 1 / depth)
    torch.testing.assert_close(scaled[1], torch.tensor(0.01 + 0.25 * (10 - 0.01)))
    with pytest.raises(ValueError, match="min_depth"):
        disp_to_depth(disp, min_depth=5.0, max_depth=1.0)


# ------------------------------------------------------------------------------------------ SSIM and error


def _ssim_dissimilarity_at(x: np.ndarray, y: np.ndarray, row: int, col: int) -> float:
    """Independent per-pixel SSIM dissimilarity: 3x3 patches of reflection-padded (C, H, W) arrays."""
    pad = ((0, 0), (1, 1), (1, 1))
    xp, yp = np.pad(x, pad, mode="reflect"), np.pad(y, pad, mode="reflect")
    values = []
    for c in range(x.shape[0]):
        a = xp[c, row : row + 3, col : col + 3].astype(np.float64).ravel()
        b = yp[c, row : row + 3, col : col + 3].astype(np.float64).ravel()
        cov = ((a - a.mean()) * (b - b.mean())).mean()
        ssim = ((2 * a.mean() * b.mean() + SSIM_C1) * (2 * cov + SSIM_C2)) / (
            (a.mean() ** 2 + b.mean() ** 2 + SSIM_C1) * (a.var() + b.var() + SSIM_C2)
        )
        values.append(min(max((1 - ssim) / 2, 0.0), 1.0))
    return float(np.mean(values))


def test_ssim_dissimilarity_matches_a_direct_patch_computation():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 6, 7, generator=generator)
    y = (x + 0.2 * torch.rand(1, 3, 6, 7, generator=generator)).clamp(0, 1)
    result = ssim_dissimilarity(x, y)
    assert result.shape == (1, 1, 6, 7)
    for row, col in [(0, 0), (0, 6), (3, 3), (5, 2)]:
        expected = _ssim_dissimilarity_at(x[0].numpy(), y[0].numpy(), row, col)
        assert result[0, 0, row, col].item() == pytest.approx(expected, abs=1e-5)


def test_ssim_of_an_image_with_itself_is_one():
    x = torch.rand(2, 3, 8, 9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ssim_dissimilarity(x, x), torch.zeros(2, 1, 8, 9), atol=1e-6, rtol=0)
    torch.testing.assert_close(reprojection_error(x, x), torch.zeros(2, 1, 8, 9), atol=1e-6, rtol=0)


def test_reprojection_error_of_constant_images_is_analytic():
    a, b = 0.25, 0.75
    error = reprojection_error(torch.full((1, 3, 5, 5), a), torch.full((1, 3, 5, 5), b))
    ssim = (2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1)  # no variance: the contrast term is 1
    expected = 0.85 * (1 - ssim) / 2 + 0.15 * abs(a - b)
    torch.testing.assert_close(error, torch.full((1, 1, 5, 5), expected), atol=1e-6, rtol=0)


def test_ssim_rejects_mismatched_images():
    with pytest.raises(ValueError, match="one shape"):
        ssim_dissimilarity(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5))


# --------------------------------------------------------------------------------------------- view synthesis


def test_synthesis_with_identity_pose_returns_the_source():
    generator = torch.Generator().manual_seed(2)
    source = torch.rand(2, 3, 12, 16, generator=generator)
    depth = 1 + 9 * torch.rand(2, 1, 12, 16, generator=generator)
    warped = synthesise_view(source, depth, torch.eye(4).repeat(2, 1, 1), _K(2, 20.0, 7.3, 5.6))
    torch.testing.assert_close(warped, source, atol=1e-5, rtol=0)


def test_lateral_translation_at_constant_depth_shifts_by_whole_pixels_with_border_padding():
    # Source camera 0.5 m to the right (a target point X is at X - 0.5 in the source frame):
    # u_src = u_tgt - f * 0.5 / Z = u_tgt - 2 px.
    source = torch.rand(1, 3, 6, 10, generator=torch.Generator().manual_seed(3))
    depth = torch.full((1, 1, 6, 10), 5.0)
    warped = synthesise_view(source, depth, _translation(-0.5), _K(1, 20.0, 4.5, 2.5))
    torch.testing.assert_close(warped[..., 2:], source[..., :-2], atol=1e-5, rtol=0)
    torch.testing.assert_close(warped[..., :2], source[..., :1].expand(-1, -1, -1, 2), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- smoothness


def test_smoothness_is_zero_on_constant_disparity():
    image = torch.rand(2, 3, 6, 8, generator=torch.Generator().manual_seed(4))
    assert edge_aware_smoothness(torch.full((2, 1, 6, 8), 0.3), image).item() == pytest.approx(0.0, abs=1e-7)


def test_smoothness_of_a_ramp_on_a_flat_image_is_its_normalised_slope():
    width, slope = 8, 0.1
    disp = (1 + slope * torch.arange(width, dtype=torch.float32)).expand(1, 1, 4, width)
    mean = 1 + slope * (width - 1) / 2
    smooth = edge_aware_smoothness(disp, torch.full((1, 3, 4, width), 0.5))
    assert smooth.item() == pytest.approx(slope / mean, rel=1e-5)


def test_disparity_edge_on_an_image_edge_costs_exp_minus_the_image_gradient():
    disp = torch.ones(1, 1, 4, 8)
    disp[..., 4:] = 2.0
    image = torch.zeros(1, 3, 4, 8)
    aligned, misaligned = image.clone(), image.clone()
    aligned[..., 4:] = 1.0
    misaligned[..., 2:] = 1.0
    ratio = edge_aware_smoothness(disp, aligned) / edge_aware_smoothness(disp, misaligned)
    assert ratio.item() == pytest.approx(math.exp(-1.0), rel=1e-5)


def test_smoothness_rejects_an_image_of_another_size():
    with pytest.raises(ValueError, match="resize the image"):
        edge_aware_smoothness(torch.rand(1, 1, 4, 4), torch.rand(1, 3, 8, 8))


# ------------------------------------------------------------------------------------------ the full loss


def _random_inputs(batch: int, height: int = 16, width: int = 24, seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, 3, height, width, generator=generator)
    sources = {o: torch.rand(batch, 3, height, width, generator=generator) for o in (-1, 1)}
    poses = {
        o: pose_from_axis_angle(0.02 * torch.randn(batch, 3, generator=generator),
                                0.2 * torch.randn(batch, 3, generator=generator))
        for o in (-1, 1)
    }
    disparities = {s: torch.rand(batch, 1, height >> s, width >> s, generator=generator) for s in (0, 1, 2)}
    return disparities, target, sources, poses, _K(batch, 20.0, width / 2 - 0.5, height / 2 - 0.5)


def test_static_camera_pair_is_masked_completely():
    disparities, target, _, poses, K = _random_inputs(batch=2)
    sources = {o: target.clone() for o in (-1, 1)}
    loss_fn = PhotometricLoss(smoothness=1e-3)
    loss, diagnostics = loss_fn(disparities, target, sources, poses, K)
    assert diagnostics["automask_fraction"].item() == 1.0
    assert diagnostics["reprojection"].item() == 0.0
    smooth_only = torch.stack(
        [1e-3 * edge_aware_smoothness(d, F.interpolate(target, size=d.shape[-2:], mode="bilinear",
                                                       align_corners=False, antialias=True)) / 2**s
         for s, d in disparities.items()]
    ).mean()
    torch.testing.assert_close(loss, smooth_only)


def test_loss_is_the_mean_over_scales_with_smoothness_divided_by_two_to_the_scale():
    disparities, target, sources, poses, K = _random_inputs(batch=2)
    loss_fn = PhotometricLoss(smoothness=0.5)
    total, _ = loss_fn(disparities, target, sources, poses, K)
    per_scale = [loss_fn({s: d}, target, sources, poses, K)[0] for s, d in disparities.items()]
    torch.testing.assert_close(total, torch.stack(per_scale).mean())
    without_smoothness, _ = PhotometricLoss(smoothness=0.0)({2: disparities[2]}, target, sources, poses, K)
    image_2 = F.interpolate(target, size=disparities[2].shape[-2:], mode="bilinear", align_corners=False,
                            antialias=True)
    expected = without_smoothness + 0.5 * edge_aware_smoothness(disparities[2], image_2) / 4
    torch.testing.assert_close(per_scale[2], expected)


def test_automasking_never_raises_the_loss_and_is_reported():
    disparities, target, sources, poses, K = _random_inputs(batch=3)
    masked, masked_diag = PhotometricLoss()(disparities, target, sources, poses, K)
    unmasked, unmasked_diag = PhotometricLoss(automask=False)(disparities, target, sources, poses, K)
    assert masked.item() <= unmasked.item()
    assert 0.0 < masked_diag["automask_fraction"].item() < 1.0
    assert unmasked_diag["automask_fraction"].item() == 0.0


def test_gradients_reach_disparities_and_poses_for_any_batch_size():
    for batch in (1, 3):
        disparities, target, sources, poses, K = _random_inputs(batch=batch)
        disparities = {s: d.requires_grad_() for s, d in disparities.items()}
        poses = {o: T.requires_grad_() for o, T in poses.items()}
        loss, diagnostics = PhotometricLoss(automask=False)(disparities, target, sources, poses, K)
        loss.backward()
        assert torch.isfinite(loss) and loss.dim() == 0
        assert all(d.grad is not None and d.grad.abs().sum() > 0 for d in disparities.values())
        assert all(T.grad is not None and T.grad.abs().sum() > 0 for T in poses.values())
        assert all(not v.requires_grad for v in diagnostics.values())


def test_loss_is_computed_in_float32_under_autocast():
    disparities, target, sources, poses, K = _random_inputs(batch=2)
    half = lambda t: t.to(torch.bfloat16)  # noqa: E731
    low = ({s: half(d) for s, d in disparities.items()}, half(target), {o: half(f) for o, f in sources.items()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = PhotometricLoss()(*low, poses, K)
    expected, _ = PhotometricLoss()(
        {s: d.float() for s, d in low[0].items()}, low[1].float(), {o: f.float() for o, f in low[2].items()}, poses, K
    )
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)


def test_bad_inputs_get_clear_errors():
    disparities, target, sources, poses, K = _random_inputs(batch=2)
    loss_fn = PhotometricLoss()
    with pytest.raises(ValueError, match="same offsets"):
        loss_fn(disparities, target, sources, {1: poses[1]}, K)
    with pytest.raises(ValueError, match="scale 1"):
        loss_fn({1: disparities[0]}, target, sources, poses, K)
    with pytest.raises(ValueError, match="K must be"):
        loss_fn(disparities, target, sources, poses, K[:1])
    with pytest.raises(ValueError, match="source frame"):
        loss_fn(disparities, target, {o: s[..., :8] for o, s in sources.items()}, poses, K)
    with pytest.raises(ValueError, match="min_depth"):
        PhotometricLoss(min_depth=0.0)


# ------------------------------------------------------------------------------------ real stereo: Middlebury


# Middlebury 2014 "Motorcycle" as shipped by scikit-image (quarter resolution), from its docstring.
MOTORCYCLE_F, MOTORCYCLE_CX, MOTORCYCLE_CY = 994.978, 311.193, 254.877
MOTORCYCLE_DOFFS = 31.086  # cx(right) - cx(left), pixels
MOTORCYCLE_BASELINE = 0.193001  # metres


@pytest.fixture(scope="module")
def motorcycle():
    """Left/right images sharing one K, true left depth and its validity.

    The right camera's principal point lies MOTORCYCLE_DOFFS px right of the left one. Dropping the first 31
    columns of the right image and the last 31 of the left leaves both with cx = 311.193 up to 0.086 px, so one
    K serves both views as view synthesis assumes. Full resolution: 2x downsampling blends depth across the
    occlusion edges, which costs the true depth more than the constant depth.
    """
    from skimage.data import stereo_motorcycle

    left, right, disparity = stereo_motorcycle()
    shift = round(MOTORCYCLE_DOFFS)
    width = left.shape[1] - shift

    def to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255

    disparity = disparity[:, :width]
    valid = np.isfinite(disparity)
    depth = np.where(valid, MOTORCYCLE_BASELINE * MOTORCYCLE_F / (np.where(valid, disparity, 0) + MOTORCYCLE_DOFFS), 0)
    return (
        to_tensor(left[:, :width]),
        to_tensor(right[:, shift:]),
        torch.from_numpy(depth.astype(np.float32))[None, None],
        torch.from_numpy(valid)[None, None],
        _K(1, MOTORCYCLE_F, MOTORCYCLE_CX, MOTORCYCLE_CY),
    )


def test_view_synthesis_on_a_real_stereo_pair_pins_the_geometry_conventions(motorcycle):
    left, right, depth, valid, K = motorcycle
    T_left_to_right = _translation(-MOTORCYCLE_BASELINE)  # left-frame point X is at X - b in the right frame
    _, in_view = warp_frame(right, depth, T_left_to_right, K)
    pixels = valid & in_view

    def loss(depth_map: torch.Tensor, T: torch.Tensor) -> float:
        return reprojection_error(synthesise_view(right, depth_map, T, K), left)[pixels].mean().item()

    true = loss(depth, T_left_to_right)
    constant = loss(torch.full_like(depth, depth[valid].median().item()), T_left_to_right)
    wrong_sign = loss(depth, _translation(MOTORCYCLE_BASELINE))
    assert true * 3 < constant, (true, constant)
    assert true < wrong_sign, (true, wrong_sign)


# ------------------------------------------------------------------------------------------------- toycity


@pytest.fixture(scope="module")
def toycity_triplet():
    """Target frame 0 with neighbours -1 / +1 at 64x128: images, true depth, true poses, K."""
    frames = render_sample(7, style="textured", height=64, width=128, offsets=(-1, 0, 1))

    def image(offset: int) -> torch.Tensor:
        return torch.from_numpy(frames[offset].rgb).permute(2, 0, 1)[None].float() / 255

    poses = {
        o: torch.from_numpy(np.linalg.inv(frames[o].cam_to_world) @ frames[0].cam_to_world).float()[None]
        for o in (-1, 1)
    }
    depth = torch.from_numpy(frames[0].depth)[None, None]
    K = torch.from_numpy(frames[0].K).float()[None]
    return image(0), {o: image(o) for o in (-1, 1)}, depth, poses, K


def test_toycity_loss_is_lowest_at_the_true_depth_and_poses(toycity_triplet):
    target, sources, depth, poses, K = toycity_triplet
    loss_fn = PhotometricLoss(smoothness=0.0)

    def loss(depth_map: torch.Tensor, pose_map: dict[int, torch.Tensor]) -> float:
        return loss_fn({0: _depth_to_sigmoid_disp(depth_map)}, target, sources, pose_map, K)[0].item()

    true = loss(depth, poses)
    perturbation = pose_from_axis_angle(torch.tensor([[0.0, 0.02, 0.0]]), torch.tensor([[0.1, 0.0, 0.0]]))
    assert true < loss(depth * 1.5, poses)
    assert true < loss(depth, {o: perturbation @ T for o, T in poses.items()})


def test_toycity_source_equal_to_target_is_masked_completely(toycity_triplet):
    target, _, depth, poses, K = toycity_triplet
    _, diagnostics = PhotometricLoss()(
        {0: _depth_to_sigmoid_disp(depth)}, target, {o: target for o in (-1, 1)}, poses, K
    )
    assert diagnostics["automask_fraction"].item() == 1.0


def test_toycity_depth_gradient_points_towards_the_true_scale(toycity_triplet):
    target, sources, depth, poses, K = toycity_triplet
    for scale, direction in ((1.3, 1.0), (0.77, -1.0)):
        log_scale = torch.tensor(math.log(scale), requires_grad=True)
        disparity = _depth_to_sigmoid_disp(depth * torch.exp(log_scale))
        loss, _ = PhotometricLoss()({0: disparity}, target, sources, poses, K)
        loss.backward()
        assert log_scale.grad.item() * direction > 0, (scale, log_scale.grad.item())


def test_reprojection_maps_are_the_pieces_the_loss_averages(toycity_triplet):
    target, sources, depth, poses, K = toycity_triplet
    loss_fn = PhotometricLoss(smoothness=0.0)
    disp = _depth_to_sigmoid_disp(depth)
    maps = loss_fn.reprojection_maps(disp, target, sources, poses, K)
    loss, diagnostics = loss_fn({0: disp}, target, sources, poses, K)
    torch.testing.assert_close(maps.min_error.mean(), loss)
    torch.testing.assert_close((~maps.supervised).float().mean(), diagnostics["automask_fraction"])
    for offset, warped in maps.warped.items():
        torch.testing.assert_close(warped, synthesise_view(sources[offset], depth.clamp(0.1, 100.0)
                                                           .where(depth > 0, torch.tensor(100.0)), poses[offset], K),
                                   atol=2e-3, rtol=0)
    # at the true geometry the warped frames explain most pixels better than the unmoved neighbours
    assert maps.supervised.float().mean() > 0.5 and (maps.error < maps.identity_error).any()
    static = loss_fn.reprojection_maps(disp, target, {o: target for o in (-1, 1)}, poses, K)
    assert not static.supervised.any() and static.min_error.abs().max() == 0
    unmasked = PhotometricLoss(automask=False).reprojection_maps(disp, target, sources, poses, K)
    assert unmasked.identity_error is None and unmasked.supervised.all()
