"""Target kinds and target readers: a fifth task added from this module alone, without editing any mtlda module.

The toy task "height" (height above the road, metres) is a scalar map read from per-sample ``.npy`` files by a
reader registered on the Cityscapes loader; a second toy target, "pixel_id", numbers the file pixels so that the
test can tell where each output pixel of the pipeline came from.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlda.data.augment import AugmentConfig, crop_sample, flip_sample, resize_sample
from mtlda.data.base import known_tasks
from mtlda.data.batch import Sample
from mtlda.data.cityscapes import CityscapesDataset
from mtlda.data.io import DatasetError
from mtlda.data.synthia import SynthiaDataset
from mtlda.data.targets import (
    BINARY_MAP,
    FLOW_FIELD,
    LABEL_MAP,
    SCALAR_MAP,
    register_target,
    target_kind,
)
from mtlda.data.toycity import render_sample
from mtlda.data.toycity_export import export_toycity

H, W = 32, 64


def _height_file(dataset, index):
    city, stem = dataset.items[index]
    return dataset.root / "height" / dataset.split / city / f"{stem}_height.npy"


def read_height(dataset, index, sample):
    """Height above the road (1, H, W) float32 metres from ``height/<split>/<city>/<stem>_height.npy`` (nan:
    unknown)."""
    height = np.load(_height_file(dataset, index))
    known = np.isfinite(height)
    sample.targets["height"] = torch.from_numpy(np.where(known, height, 0.0).astype(np.float32))[None]
    sample.masks["height"] = torch.from_numpy(known)[None]


def read_pixel_id(dataset, index, sample):
    """1 + v * W + u of every file pixel (1, H, W): an exact record of where a pixel came from (0 is padding)."""
    h, w = sample.image.shape[-2:]
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, h, w)
    sample.targets["pixel_id"] = ids
    sample.masks["pixel_id"] = torch.ones(1, h, w, dtype=torch.bool)


register_target("height", SCALAR_MAP, "height maps")
register_target("pixel_id", SCALAR_MAP)
CityscapesDataset.register_target_reader("height", read_height)
CityscapesDataset.register_target_reader("pixel_id", read_pixel_id)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("height") / "cityscapes"
    export_toycity(root, "cityscapes", height=H, width=W, num_train=2, num_val=1)
    ds = CityscapesDataset(root, "train", ["semseg"], (H, W), class_set_name="toycity")
    for index in range(len(ds)):
        truth = render_sample(index, height=H, width=W)[0]
        v, u = np.mgrid[0:H, 0:W].astype(np.float64)
        rays = np.stack([(u - truth.K[0, 2]) / truth.K[0, 0], (v - truth.K[1, 2]) / truth.K[1, 1], np.ones_like(u)])
        world_z = np.einsum("k,khw->hw", truth.cam_to_world[2, :3], rays * truth.depth) + truth.cam_to_world[2, 3]
        path = _height_file(ds, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.where(truth.valid, world_z, np.nan).astype(np.float32))
    return root


def _file_level(root, index):
    ds = CityscapesDataset(root, "train", ["height", "pixel_id"], (H, W))
    return ds.read_files(index)


def test_the_reader_runs_at_file_resolution(root):
    sample = _file_level(root, 0)
    height, known = sample.targets["height"][0], sample.masks["height"][0]
    assert height.shape == (H, W) and known.dtype == torch.bool
    road = torch.from_numpy(render_sample(0, height=H, width=W)[0].labels == 0) & known
    assert road.sum() > 100 and height[road].abs().max() < 1e-3  # the road is at height 0
    assert "semseg" not in sample.targets and "depth" not in sample.targets


def test_height_is_resized_cropped_flipped_and_padded_like_a_scalar_map(root):
    """Fixed transforms against independent torch operations."""
    sample = _file_level(root, 1)
    height, known = sample.targets["height"], sample.masks["height"]
    small = resize_sample(sample, 20, 40)
    expected = F.interpolate(height[None], size=(20, 40), mode="nearest-exact")[0]
    assert torch.equal(small.targets["height"], expected)
    assert torch.equal(small.masks["height"], F.interpolate(known[None].float(), (20, 40), mode="nearest-exact")[0]
                       .bool())
    window = crop_sample(sample, -3, 5, H, W)  # 3 rows of padding on top, 5 columns cut on the left
    assert torch.equal(window.targets["height"][:, 3:, : W - 5], height[:, : H - 3, 5:])
    assert (window.targets["height"][:, :3] == 0).all() and not window.masks["height"][:, :3].any()
    assert (window.targets["height"][:, :, W - 5:] == 0).all() and not window.masks["height"][:, :, W - 5:].any()
    mirrored = flip_sample(sample)
    assert torch.equal(mirrored.targets["height"], height.flip(-1))  # a scalar: mirrored, never negated
    assert torch.equal(mirrored.masks["height"], known.flip(-1))


@pytest.mark.parametrize("seed", range(6))
def test_the_pipeline_carries_height_through_random_zoom_crop_and_flip(root, seed):
    source = _file_level(root, 1)
    ds = CityscapesDataset(root, "train", ["height", "pixel_id", "depth"], (H, W),
                           augment=AugmentConfig(crop=(24, 56), flip=True, scale_range=(0.6, 1.4)))
    torch.manual_seed(seed)
    out = ds[1]
    assert out.targets["height"].shape == (1, 24, 56) and out.masks["height"].shape == (1, 24, 56)
    ids = out.targets["pixel_id"][0].long()
    padded = ids == 0
    assert torch.equal(padded, ~out.masks["pixel_id"][0])
    assert (out.targets["height"][0][padded] == 0).all() and not out.masks["height"][0][padded].any()
    flat_height = source.targets["height"][0].reshape(-1)
    flat_known = source.masks["height"][0].reshape(-1)
    inside = ~padded
    assert torch.equal(out.targets["height"][0][inside], flat_height[ids[inside] - 1])
    assert torch.equal(out.masks["height"][0][inside], flat_known[ids[inside] - 1])
    # where each output pixel's source pixel lies, by K: within one pixel of the output pixel
    u_src, v_src = ((ids - 1) % W).float(), ((ids - 1) // W).float()
    rays_x = (u_src - source.K[0, 2]) / source.K[0, 0]
    rays_y = (v_src - source.K[1, 2]) / source.K[1, 1]
    row = ids[12][inside[12]]
    flipped = bool((row[1:] - row[:-1]).sum() < 0)
    u_out = out.K[0, 0] * (-rays_x if flipped else rays_x) + out.K[0, 2]
    v_out = out.K[1, 1] * rays_y + out.K[1, 2]
    v, u = torch.meshgrid(torch.arange(24.0), torch.arange(56.0), indexing="ij")
    assert (u_out - u)[inside].abs().max() <= 1.0 and (v_out - v)[inside].abs().max() <= 1.0


def test_zoom_out_pads_and_flip_happen_among_the_seeds(root):
    ds = CityscapesDataset(root, "train", ["height", "pixel_id"], (H, W),
                           augment=AugmentConfig(crop=(24, 56), flip=True, scale_range=(0.6, 1.4)))
    padded, flips = 0, 0
    for seed in range(6):
        torch.manual_seed(seed)
        ids = ds[1].targets["pixel_id"][0, 12]
        padded += int((ids == 0).any())
        row = ids[ids > 0]
        flips += int((row[1:] - row[:-1]).sum() < 0)
    assert padded and flips and flips < 6


def test_loaders_without_a_reader_name_the_fix(tmp_path):
    root = tmp_path / "synthia"
    export_toycity(root, "synthia", height=H, width=W, num_train=1, num_val=1)
    with pytest.raises(DatasetError, match=r"synthia has no height maps.*cityscapes.*SynthiaDataset\.register_target_"
                                           r"reader\('height', reader\)"):
        SynthiaDataset(root, "train", ["height"], (H, W), allow_missing=True)
    assert {"height", "pixel_id", "disp"} <= set(known_tasks())


def test_reader_registration_rules():
    with pytest.raises(ValueError, match="reads depth targets itself"):
        CityscapesDataset.register_target_reader("depth", read_height)
    with pytest.raises(ValueError, match="already has a reader"):
        CityscapesDataset.register_target_reader("height", read_pixel_id)
    with pytest.raises(ValueError, match="unknown target 'heigth'.*did you mean 'height'"):
        CityscapesDataset.register_target_reader("heigth", read_height)
    with pytest.raises(ValueError, match="already registered as a scalar map"):
        register_target("height", LABEL_MAP)
    assert SynthiaDataset.target_reader("height") is None


def test_a_bad_reader_is_named(root):
    class Broken(CityscapesDataset):
        pass

    register_target("broken", SCALAR_MAP)
    Broken.register_target_reader("broken", lambda dataset, index, sample: sample.targets.update(
        broken=torch.zeros(1, 4, 4)))
    with pytest.raises(ValueError, match="'broken' target reader of Broken must set"):
        Broken(root, "train", ["broken"], (H, W)).read_files(0)


def test_built_in_kinds():
    assert [target_kind(n) for n in ("semseg", "depth", "edges")] == [LABEL_MAP, SCALAR_MAP, BINARY_MAP]
    flow = torch.stack([torch.full((4, 6), 2.0), torch.full((4, 6), -1.0)])
    resized = FLOW_FIELD.resize(flow, (8, 3))  # twice the height, half the width
    assert torch.equal(resized[0], torch.full((8, 3), 1.0)) and torch.equal(resized[1], torch.full((8, 3), -2.0))
    ramp = torch.arange(6.0).expand(2, 4, 6)
    flipped = FLOW_FIELD.flip(ramp)
    assert torch.equal(flipped[0], -ramp[0].flip(-1)) and torch.equal(flipped[1], ramp[1].flip(-1))
    assert LABEL_MAP.pad_value == 255 and FLOW_FIELD.pad_value == 0
    sample = Sample(image=torch.zeros(3, 4, 6), K=torch.eye(3), targets={"flow": flow})
    with pytest.raises(ValueError, match="unknown target 'flow'"):
        flip_sample(sample)
