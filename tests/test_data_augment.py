"""Joint augmentation: geometry stays consistent between image, targets, masks and K."""

import math

import pytest
import torch

from mtlda.constants import IGNORE_INDEX
from mtlda.data.augment import (
    AugmentConfig,
    crop_sample,
    flip_sample,
    jitter_colors,
    random_augment,
    resize_sample,
)
from mtlda.data.batch import Sample
from mtlda.data.toycity import render_sample
from mtlda.geometry import normals_from_depth

H, W = 48, 96


def _ramp_sample() -> Sample:
    """Image channels 0/1 hold the pixel's own column/row (normalised), a constant-depth plane, K off-centre."""
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    image = torch.stack([u / W, v / H, torch.zeros_like(u)])
    K = torch.tensor([[50.0, 0.0, 45.3], [0.0, 55.0, 20.7], [0.0, 0.0, 1.0]])
    semseg = (u // 10 % 3).long()
    semseg[:5, :7] = IGNORE_INDEX
    ones = torch.ones(1, H, W)
    return Sample(image=image, K=K, targets={"semseg": semseg, "depth": 4.0 * ones},
                  masks={"depth": ones.bool()}, frames={1: image.clone()}, id="ramp")


def _rendered_sample() -> Sample:
    f = render_sample(3, height=64, width=128)[0]
    return Sample(
        image=torch.from_numpy(f.rgb).permute(2, 0, 1).float() / 255,
        K=torch.from_numpy(f.K).float(),
        targets={"depth": torch.from_numpy(f.depth)[None], "normals": torch.from_numpy(f.normals).permute(2, 0, 1),
                 "semseg": torch.from_numpy(f.labels).long(), "edges": torch.from_numpy(f.edges).float()[None]},
        masks={"depth": torch.from_numpy(f.valid)[None], "normals": torch.from_numpy(f.valid)[None]},
        id="toycity",
    )


def _assert_samples_equal(a: Sample, b: Sample) -> None:
    assert torch.equal(a.image, b.image) and torch.allclose(a.K, b.K)
    for field in ("targets", "masks", "frames"):
        da, db = getattr(a, field), getattr(b, field)
        assert da.keys() == db.keys()
        assert all(torch.equal(da[k], db[k]) for k in da)


def _projection_error(sample: Sample, original_K: torch.Tensor) -> float:
    """Largest distance (pixels) between where K puts the 3D point of each interior pixel (recovered from the ramp
    image) and that pixel, over pixels not touched by padding or image borders. A flipped image shows the mirrored
    scene, whose points have x negated."""
    h, w = sample.image.shape[-2:]
    u0, v0 = sample.image[0] * W, sample.image[1] * H
    rays = torch.linalg.inv(original_K) @ torch.stack([u0, v0, torch.ones_like(u0)]).reshape(3, -1)
    flipped = bool(u0[h // 2, w // 2 + 1] < u0[h // 2, w // 2])
    if flipped:
        rays[0] = -rays[0]
    projected = sample.K @ rays
    projected = projected[:2] / projected[2:]
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    keep = sample.masks["depth"][0].clone()
    keep &= (u0 > 3) & (u0 < W - 4) & (v0 > 3) & (v0 < H - 4)
    keep = -torch.nn.functional.max_pool2d(-keep[None].float(), 5, 1, 2)[0] > 0
    assert keep.sum() > 100
    err = (projected - torch.stack([u, v]).reshape(2, -1)).abs().reshape(2, h, w)
    return float(err[:, keep].max())


def test_flip_twice_is_identity():
    s = _rendered_sample()
    _assert_samples_equal(flip_sample(flip_sample(s)), s)


def test_flip_mirrors_cx_and_negates_normal_x():
    s = _rendered_sample()
    f = flip_sample(s)
    assert math.isclose(float(f.K[0, 2]), 128 - 1 - float(s.K[0, 2]), rel_tol=1e-6)
    ramp = _ramp_sample()
    assert _projection_error(flip_sample(ramp), ramp.K) < 2e-3
    assert torch.equal(f.targets["normals"][0], -s.targets["normals"][0].flip(-1))
    assert torch.equal(f.targets["normals"][1:], s.targets["normals"][1:].flip(-1))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_K_projects_points_to_their_pixels_after_random_zoom_crop_flip(seed):
    s = _ramp_sample()
    cfg = AugmentConfig(crop=(40, 72), flip=True, scale_range=(0.7, 1.5))
    out = random_augment(s, cfg, torch.Generator().manual_seed(seed))
    assert out.image.shape[-2:] == (40, 72)
    # torch's antialiased shrink at non-integer factors shifts a linear ramp by up to ~0.06 px
    assert _projection_error(out, s.K) < 0.1


def test_K_after_plain_resize_is_exact():
    s = _ramp_sample()
    for size in ((24, 48), (16, 32), (96, 160), (60, 150)):  # integer shrink factors and enlargements
        assert _projection_error(resize_sample(s, *size), s.K) < 2e-3


def test_zoom_keeps_depth_values_and_pads_outside():
    s = _ramp_sample()
    out = crop_sample(resize_sample(s, 30, 60), -5, -7, H, W)  # zoom out by ~0.62, then pad back to H x W
    assert torch.all(out.targets["depth"][out.masks["depth"]] == 4.0)
    assert not out.masks["depth"][0, :5].any() and not out.masks["depth"][0, :, :7].any()
    assert (out.targets["semseg"][:5] == IGNORE_INDEX).all() and (out.image[:, :5] == 0).all()


def test_ignore_index_and_class_ids_survive_every_transform():
    s = _ramp_sample()
    cfg = AugmentConfig(crop=(40, 80), flip=True, scale_range=(0.6, 1.6), color_jitter=0.3)
    for seed in range(6):
        out = random_augment(s, cfg, torch.Generator().manual_seed(seed))
        assert set(out.targets["semseg"].unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
        assert out.targets["semseg"].dtype == torch.int64
    shrunk = resize_sample(s, H // 2, W // 2)
    assert (shrunk.targets["semseg"][:2, :3] == IGNORE_INDEX).all()


def test_normals_stay_consistent_with_depth_after_flip_and_crop():
    s = _rendered_sample()
    out = crop_sample(flip_sample(s), 5, 9, 50, 100)
    recomputed, valid = normals_from_depth(out.targets["depth"][None], out.K[None], out.masks["depth"][None])
    both = valid[0, 0] & out.masks["normals"][0]
    cos = (recomputed[0] * out.targets["normals"]).sum(0)[both]
    assert both.sum() > 1000
    assert float(cos.median()) > math.cos(math.radians(2))
    unflipped_x = out.targets["normals"] * torch.tensor([-1.0, 1.0, 1.0]).reshape(3, 1, 1)
    wrong = (recomputed[0] * unflipped_x).sum(0)[both]
    assert float((wrong < math.cos(math.radians(10))).float().mean()) > 0.05  # the x negation matters


def test_colour_jitter_changes_only_images_with_shared_factors():
    s = _ramp_sample()
    s.image[2] = 0.5
    s.frames[1] = s.image.clone()
    out = jitter_colors(s, 1.2, 0.8, 1.3)
    assert not torch.equal(out.image, s.image)
    assert torch.equal(out.image, out.frames[1])
    assert all(torch.equal(out.targets[k], s.targets[k]) for k in s.targets)
    assert 0 <= float(out.image.min()) and float(out.image.max()) <= 1


def test_augmentation_is_deterministic_given_a_generator():
    s = _rendered_sample()
    cfg = AugmentConfig(crop=(48, 96), flip=True, scale_range=(0.8, 1.3), color_jitter=0.2)
    a = random_augment(s, cfg, torch.Generator().manual_seed(7))
    b = random_augment(s, cfg, torch.Generator().manual_seed(7))
    _assert_samples_equal(a, b)
    others = [random_augment(s, cfg, torch.Generator().manual_seed(k)) for k in range(8, 12)]
    assert any(not torch.equal(o.image, a.image) for o in others)


def test_thin_edges_survive_downscaling():
    edges = torch.zeros(1, 64, 128)
    edges[0, 31, :] = 1
    edges[0, :, 77] = 1
    s = Sample(image=torch.zeros(3, 64, 128), K=torch.eye(3), targets={"edges": edges})
    out = resize_sample(s, 16, 32).targets["edges"][0]
    assert out.sum(1).max() == 32 and out.sum(0).max() == 16
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_bad_augment_settings_are_rejected():
    with pytest.raises(ValueError, match="scale_jitter"):
        AugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="color_jitter"):
        AugmentConfig(color_jitter=1.5)
