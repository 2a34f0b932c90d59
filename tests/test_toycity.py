"""Tests of the toycity procedural renderer: determinism, styles, geometric consistency, poses, classes."""

import numpy as np
import pytest

from mtlda.data import toycity as tc

H, W = 64, 128


@pytest.fixture(scope="module")
def triplet():
    return tc.render_sample(3, style="textured", height=H, width=W, seed=0, offsets=(-1, 0, 1))


@pytest.fixture(scope="module")
def frames_20():
    return [tc.render_sample(i, height=H, width=W, seed=1)[0] for i in range(20)]


def _frame_arrays(frame: tc.Frame) -> dict:
    return {k: getattr(frame, k) for k in ("rgb", "depth", "valid", "labels", "normals", "edges", "K",
                                           "cam_to_world")}


def _backproject(frame: tc.Frame) -> np.ndarray:
    """(H, W, 3) camera-frame points from depth and K, computed independently of the renderer."""
    h, w = frame.depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    K = frame.K
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    d = frame.depth.astype(np.float64)
    return np.stack([x * d, y * d, d], -1)


def _to_world(points_cam: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return points_cam @ pose[:3, :3].T + pose[:3, 3]


def test_frame_shapes_and_dtypes(triplet):
    assert set(triplet) == {-1, 0, 1}
    f = triplet[0]
    assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
    assert f.depth.shape == (H, W) and f.depth.dtype == np.float32
    assert f.valid.shape == (H, W) and f.valid.dtype == bool
    assert f.labels.shape == (H, W) and f.labels.dtype == np.uint8 and f.labels.max() < len(tc.CLASS_NAMES)
    assert f.normals.shape == (H, W, 3) and f.normals.dtype == np.float32
    assert f.edges.shape == (H, W) and f.edges.dtype == np.uint8 and set(np.unique(f.edges)) <= {0, 1}
    assert f.K.shape == (3, 3) and f.cam_to_world.shape == (4, 4)
    assert np.allclose(f.cam_to_world[:3, :3] @ f.cam_to_world[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(f.cam_to_world[:3, :3]), 1.0)


def test_class_tables():
    assert tc.CLASS_NAMES == ("road", "sidewalk", "building", "pole", "traffic sign", "vegetation", "sky",
                              "person", "car")
    assert tc.CITYSCAPES_LABEL_IDS == (7, 8, 11, 17, 20, 21, 23, 24, 26)
    assert set(tc.STYLES) >= {"flat", "tinted", "synthetic", "textured"}
    assert isinstance(tc.GENERATOR_VERSION, str) and tc.GENERATOR_VERSION


def test_same_arguments_give_identical_arrays(triplet):
    again = tc.render_sample(3, style="textured", height=H, width=W, seed=0, offsets=(-1, 0, 1))
    for offset in (-1, 0, 1):
        for name, value in _frame_arrays(triplet[offset]).items():
            assert np.array_equal(value, _frame_arrays(again[offset])[name]), name
    alone = tc.render_sample(3, style="textured", height=H, width=W, seed=0, offsets=(1,))[1]
    for name, value in _frame_arrays(triplet[1]).items():
        assert np.array_equal(value, _frame_arrays(alone)[name]), name


def test_different_index_or_seed_gives_different_scene(triplet):
    other_index = tc.render_sample(4, style="textured", height=H, width=W, seed=0)[0]
    other_seed = tc.render_sample(3, style="textured", height=H, width=W, seed=1)[0]
    for other in (other_index, other_seed):
        assert (other.labels != triplet[0].labels).mean() > 0.05
        assert not np.array_equal(other.depth, triplet[0].depth)


def test_styles_share_geometry_and_differ_in_colour():
    flat_means, textured_means, saturation_gap = [], [], []
    for index in range(3):
        flat = tc.render_sample(index, style="flat", height=H, width=W, offsets=(0, 1))
        textured = tc.render_sample(index, style="textured", height=H, width=W, offsets=(0, 1))
        for offset in (0, 1):
            a, b = flat[offset], textured[offset]
            for name in ("depth", "valid", "labels", "normals", "edges", "K", "cam_to_world"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name
        rgb_a, rgb_b = flat[0].rgb.reshape(-1, 3) / 255.0, textured[0].rgb.reshape(-1, 3) / 255.0
        flat_means.append(rgb_a.mean(0))
        textured_means.append(rgb_b.mean(0))
        saturation = [((c.max(1) - c.min(1)) / np.maximum(c.max(1), 1e-6)).mean() for c in (rgb_a, rgb_b)]
        saturation_gap.append(saturation[0] - saturation[1])
    assert np.linalg.norm(np.mean(flat_means, 0) - np.mean(textured_means, 0)) > 0.1
    assert np.mean(saturation_gap) > 0.1


def _class_chromaticity(frame: tc.Frame, label: int) -> np.ndarray:
    rgb = frame.rgb[frame.labels == label].astype(np.float64) + 1.0
    return (rgb / rgb.sum(1, keepdims=True)).mean(0)


def test_the_tinted_style_gives_each_object_its_own_colour_without_texture():
    road, vegetation, car, sky = (tc.CLASS_NAMES.index(name) for name in ("road", "vegetation", "car", "sky"))
    scenes = [(tc.render_sample(i, style="tinted", height=H, width=W)[0],
               tc.render_sample(i, style="flat", height=H, width=W)[0]) for i in range(4)]
    for tinted, flat in scenes:
        for name in ("depth", "valid", "labels", "normals", "edges"):
            assert np.array_equal(getattr(tinted, name), getattr(flat, name)), name
    tinted_spread, flat_spread = [], []
    for label in (road, vegetation, car):
        present = [(a, b) for a, b in scenes if (a.labels == label).sum() > 20]
        assert len(present) >= 2, tc.CLASS_NAMES[label]
        tinted_spread.append(np.ptp([_class_chromaticity(a, label) for a, _ in present], axis=0).max())
        flat_spread.append(np.ptp([_class_chromaticity(b, label) for _, b in present], axis=0).max())
    # flat: the class decides the colour (same chromaticity in every scene); tinted: each object draws its own
    assert max(flat_spread) < 0.01 and min(tinted_spread) > 0.02
    frame = scenes[0][0]
    sky_rgb = frame.rgb[frame.labels == sky]
    assert len(sky_rgb) and np.ptp(sky_rgb, axis=0).max() == 0  # a plain sky: no gradient, clouds or noise
    assert frame.rgb[frame.labels == road].astype(np.float64).std(0).max() < 3.0  # one shaded colour: no markings


def _saturation(frame: tc.Frame) -> float:
    rgb = frame.rgb.reshape(-1, 3).astype(np.float64)
    return float(((rgb.max(1) - rgb.min(1)) / np.maximum(rgb.max(1), 1.0)).mean())


def _sky_roughness(frame: tc.Frame) -> float:
    """Mean absolute difference (grey levels) between horizontally adjacent sky pixels."""
    sky = frame.labels == tc.CLASS_NAMES.index("sky")
    both = sky[:, 1:] & sky[:, :-1]
    return float(np.abs(np.diff(frame.rgb.astype(np.float64), axis=1))[both].mean())


def test_the_synthetic_style_renders_the_textured_materials_as_a_game_engine():
    road = tc.CLASS_NAMES.index("road")
    for index in range(3):
        synthetic = tc.render_sample(index, style="synthetic", height=H, width=W, offsets=(0, 1))
        textured = tc.render_sample(index, style="textured", height=H, width=W, offsets=(0, 1))
        tinted = tc.render_sample(index, style="tinted", height=H, width=W)[0]
        for offset in (0, 1):
            for name in ("depth", "valid", "labels", "normals", "edges", "K", "cam_to_world"):
                assert np.array_equal(getattr(synthetic[offset], name), getattr(textured[offset], name)), name
        a, b = synthetic[0], textured[0]
        # the textured style's materials: lane markings and asphalt grain on the road, which tinted lacks
        road_std = [f.rgb[f.labels == road].astype(np.float64).std(0).max() for f in (a, b, tinted)]
        assert road_std[2] < 1.0 and min(road_std[:2]) > 10.0
        # no camera: a smooth cloudless sky without sensor noise, more saturated colours than the camera's
        assert _sky_roughness(a) < 1.0 < 2.0 < _sky_roughness(b)
        assert _saturation(a) > _saturation(b) + 0.1


def test_unknown_style_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="flat"):
        tc.render_sample(0, style="photoreal")
    with pytest.raises(ValueError, match="offsets"):
        tc.render_sample(0, offsets=(tc.MAX_ABS_OFFSET + 1,))
    with pytest.raises(ValueError, match="offsets"):
        tc.render_sample(0, offsets=())
    with pytest.raises(ValueError, match="index"):
        tc.render_sample(-1)
    with pytest.raises(ValueError, match="height"):
        tc.render_sample(0, height=2)


def test_intrinsics_follow_the_resize_convention():
    big, small = tc.camera_matrix(128, 256), tc.camera_matrix(64, 128)
    s = 0.5
    assert np.isclose(small[0, 0], big[0, 0] * s) and np.isclose(small[1, 1], big[1, 1] * s)
    assert np.isclose(small[0, 2], (big[0, 2] + 0.5) * s - 0.5)
    assert np.isclose(small[1, 2], (big[1, 2] + 0.5) * s - 0.5)
    fov = 2 * np.degrees(np.arctan((256 / 2) / big[0, 0]))
    assert 80 < fov < 100
    assert np.array_equal(tc.render_sample(0, height=64, width=128)[0].K, small)


def test_road_points_lie_on_the_ground_plane(triplet):
    for frame in triplet.values():
        road = (frame.labels == tc.CLASS_NAMES.index("road")) & frame.valid
        assert road.sum() > 0.1 * road.size
        world = _to_world(_backproject(frame)[road], frame.cam_to_world)
        camera_height_above_point = frame.cam_to_world[2, 3] - world[:, 2]
        assert np.allclose(camera_height_above_point, tc.CAMERA_HEIGHT, atol=1e-3)
        assert np.isclose(frame.cam_to_world[2, 3], tc.CAMERA_HEIGHT)


def test_road_normals_are_the_ground_normal_in_camera_frame(triplet):
    for frame in triplet.values():
        road = (frame.labels == tc.CLASS_NAMES.index("road")) & frame.valid
        up_in_camera = frame.cam_to_world[:3, :3].T @ np.array([0.0, 0.0, 1.0])
        assert up_in_camera[1] < -0.95  # ground below the camera faces it: mostly -y (up in the image)
        assert np.allclose(frame.normals[road], up_in_camera, atol=1e-5)


def test_normals_are_unit_camera_facing_and_zero_where_invalid(triplet):
    for frame in triplet.values():
        n = frame.normals
        assert np.allclose(np.linalg.norm(n[frame.valid], axis=-1), 1.0, atol=1e-5)
        assert np.all(n[~frame.valid] == 0)
        rays = _backproject(tc.Frame(**{**_frame_arrays(frame), "depth": np.ones((H, W), np.float32)}))
        assert np.all((n * rays).sum(-1)[frame.valid] < 0)


def test_normals_from_depth_match_analytic_normals_on_planes(triplet):
    frame = triplet[0]
    points = _backproject(frame)
    normal_fd = np.cross(points[1:-1, 2:] - points[1:-1, :-2], points[2:, 1:-1] - points[:-2, 1:-1])
    normal_fd /= np.linalg.norm(normal_fd, axis=-1, keepdims=True) + 1e-12
    normal_fd *= -np.sign((normal_fd * points[1:-1, 1:-1]).sum(-1, keepdims=True))  # face the camera
    analytic = frame.normals[1:-1, 1:-1]
    same = np.ones_like(analytic[..., 0], dtype=bool)
    for dv, du in ((0, 0), (0, 2), (2, 0), (1, 0), (1, 2), (0, 1), (2, 1)):
        window = (slice(dv, dv + H - 2), slice(du, du + W - 2))
        same &= frame.valid[window] & np.all(np.abs(frame.normals[window] - analytic) < 1e-6, -1)
        same &= frame.labels[window] == frame.labels[1:-1, 1:-1]
    same &= frame.depth[1:-1, 1:-1] < 25  # float32 depth is too coarse for differences at grazing angles
    cos = (normal_fd * analytic).sum(-1)[same]
    road = (frame.labels[1:-1, 1:-1] == tc.CLASS_NAMES.index("road"))[same]
    assert road.sum() > 500 and (~road).sum() > 100
    assert np.all(cos[road] > np.cos(np.radians(0.5)))
    assert np.mean(cos[~road] > np.cos(np.radians(1.0))) > 0.9


def _reproject(f0: tc.Frame, f1: tc.Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, z) (H, W) each: where frame 0's pixels land in frame 1, and their z-depth there, from frame 0's true
    depth and both poses."""
    world = _to_world(_backproject(f0), f0.cam_to_world)
    in_f1 = (world - f1.cam_to_world[:3, 3]) @ f1.cam_to_world[:3, :3]
    z = in_f1[..., 2]
    return f1.K[0, 0] * in_f1[..., 0] / z + f1.K[0, 2], f1.K[1, 1] * in_f1[..., 1] / z + f1.K[1, 2], z


def test_world_points_reproject_into_the_next_frame_with_matching_depth(triplet):
    f0, f1 = triplet[0], triplet[1]
    step = f1.cam_to_world[:3, 3] - f0.cam_to_world[:3, 3]
    assert 0.8 < np.linalg.norm(step) < 1.2
    assert (f0.cam_to_world[:3, :3].T @ step)[2] > 0.95 * np.linalg.norm(step)  # forward along the optical axis
    assert not np.allclose(f0.cam_to_world[:3, :3], f1.cam_to_world[:3, :3])  # small rotation perturbations

    u, v, z = _reproject(f0, f1)
    inside = f0.valid & (u >= 0) & (u <= W - 1.001) & (v >= 0) & (v <= H - 1.001) & (f0.depth < 60)

    # Road: a plane, whose inverse depth is affine in (u, v): bilinear interpolation of frame 1 is exact.
    road_id = tc.CLASS_NAMES.index("road")
    u0, v0 = np.floor(u[inside]).astype(int), np.floor(v[inside]).astype(int)
    fu, fv = u[inside] - u0, v[inside] - v0
    corners = [(v0, u0), (v0, u0 + 1), (v0 + 1, u0), (v0 + 1, u0 + 1)]
    on_road = (f0.labels[inside] == road_id) & np.all(
        [(f1.labels[c] == road_id) & f1.valid[c] for c in corners], 0)
    inv = [1.0 / np.where(f1.valid[c], f1.depth[c], 1.0).astype(np.float64) for c in corners]
    inv_interp = (inv[0] * (1 - fu) + inv[1] * fu) * (1 - fv) + (inv[2] * (1 - fu) + inv[3] * fu) * fv
    assert on_road.sum() > 500
    assert np.allclose(inv_interp[on_road], 1.0 / z[inside][on_road], rtol=1e-4)

    # Everything: nearest-pixel depth agrees except at occlusions and discontinuities.
    ui, vi = np.round(u[inside]).astype(int), np.round(v[inside]).astype(int)
    rel = np.abs(f1.depth[vi, ui] - z[inside]) / z[inside]
    assert np.mean(rel < 0.05) > 0.85

    # The check can fail: ignoring the motion gives clearly wrong depths.
    rel_static = np.abs(f1.depth[vi, ui] - f0.depth[inside]) / f0.depth[inside]
    assert np.median(rel_static) > 5 * np.median(rel)


def test_edges_mark_every_label_change_and_nothing_else(triplet):
    labels, edges = triplet[0].labels, triplet[0].edges.astype(bool)
    right = labels[:, :-1] != labels[:, 1:]
    down = labels[:-1, :] != labels[1:, :]
    assert np.all(edges[:, :-1] | edges[:, 1:] | ~right)
    assert np.all(edges[:-1, :] | edges[1:, :] | ~down)
    changes_next = np.zeros_like(edges)
    changes_next[:, :-1] |= right
    changes_next[:, 1:] |= right
    changes_next[:-1, :] |= down
    changes_next[1:, :] |= down
    assert not np.any(edges & ~changes_next)
    assert edges.mean() < 0.2


def test_every_class_appears_and_far_pixels_are_invalid(frames_20):
    counts = np.zeros(len(tc.CLASS_NAMES))
    for frame in frames_20:
        counts += np.bincount(frame.labels.ravel(), minlength=len(tc.CLASS_NAMES))
        assert np.all(frame.depth[~frame.valid] == 0)
        assert np.all((frame.depth[frame.valid] > 0) & (frame.depth[frame.valid] <= tc.MAX_DEPTH))
        assert not frame.valid[frame.labels == tc.CLASS_NAMES.index("sky")].any()
    fractions = counts / counts.sum()
    assert np.all(fractions > 0.002), dict(zip(tc.CLASS_NAMES, fractions))
    assert 0.2 < fractions[tc.CLASS_NAMES.index("road")] < 0.5
    assert 0.05 < fractions[tc.CLASS_NAMES.index("sky")] < 0.3


def test_far_ground_is_invalid_not_kilometres():
    frame = tc.render_sample(0, height=128, width=256)[0]
    road = frame.labels == tc.CLASS_NAMES.index("road")
    assert (road & ~frame.valid).any()  # road near the horizon lies beyond the maximum depth
    assert frame.depth.max() <= tc.MAX_DEPTH


def test_pixel_footprint_rays_centre_on_the_pixel_ray_and_follow_the_supersampled_camera():
    from mtlda.data.toycity.raycast import camera_rays, supersampled_camera

    K = tc.camera_matrix(8, 16)
    one, grid = camera_rays(K, 8, 16), camera_rays(K, 8, 16, samples=3)
    assert grid.shape == (24, 48, 3)
    assert np.array_equal(grid[1::3, 1::3], one)  # bit for bit: the geometry of every style is the same
    blocks = grid.reshape(8, 3, 16, 3, 3)
    assert np.allclose(blocks.mean((1, 3)), one, atol=1e-12)  # the footprint is centred on the pixel
    spread = blocks[..., 0].max((1, 3)) - blocks[..., 0].min((1, 3))
    assert np.allclose(spread * K[0, 0], 2 / 3)  # rays at -1/3, 0, +1/3 pixel
    K3 = supersampled_camera(K, 3)
    projected = grid @ K3.T  # z = 1: pixel coordinates of each ray in the 24 x 48 grid
    v, u = np.mgrid[0:24, 0:48]
    assert np.allclose(projected[..., 0], u) and np.allclose(projected[..., 1], v)
    with pytest.raises(ValueError, match="odd"):
        camera_rays(K, 8, 16, samples=2)


def _road_warp_error(frames: dict, source: int) -> float:
    """Mean |I_0 - I_source warped to frame 0| on road pixels, with the true depth and poses (bilinear)."""
    f0, fs = frames[0], frames[source]
    u, v, _ = _reproject(f0, fs)
    road = f0.valid & (f0.labels == tc.CLASS_NAMES.index("road"))
    inside = road & (u >= 0) & (u <= W - 1.001) & (v >= 0) & (v <= H - 1.001)
    u0, v0 = np.floor(u[inside]).astype(int), np.floor(v[inside]).astype(int)
    fu, fv = (u[inside] - u0)[:, None], (v[inside] - v0)[:, None]
    img = fs.rgb.astype(np.float64) / 255.0
    warped = (img[v0, u0] * (1 - fu) + img[v0, u0 + 1] * fu) * (1 - fv) + (
        img[v0 + 1, u0] * (1 - fu) + img[v0 + 1, u0 + 1] * fu) * fv
    return float(np.abs(warped - f0.rgb[inside] / 255.0).mean())


def test_the_textured_camera_averages_each_pixel_footprint_so_frames_agree_under_the_true_motion(monkeypatch):
    """Point-sampled textures finer than a pixel alias into noise that changes from frame to frame; the textured
    style's 3x3 footprint brings the warp error of the road down to its sensor noise (std 0.02 per channel and
    frame: |n_0 - n_1| has mean 0.0226 before the bilinear interpolation averages n_1 down)."""
    from mtlda.data.toycity import render

    footprint = [_road_warp_error(tc.render_sample(i, style="textured", height=H, width=W, offsets=(0, 1)), 1)
                 for i in range(3)]
    monkeypatch.setitem(render.PIXEL_SAMPLES, "textured", 1)
    point = [_road_warp_error(tc.render_sample(i, style="textured", height=H, width=W, offsets=(0, 1)), 1)
             for i in range(3)]
    assert np.mean(footprint) < 0.8 * np.mean(point)  # measured 0.023 vs 0.033
    # At the noise level, not below it: noise drawn per ray and averaged would give 0.012.
    assert 0.0226 * 0.8 < np.mean(footprint) < 0.0226 * 1.15
