"""The real loaders on toycity scenes written in each real format, compared with the renderer's ground truth."""

import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mtlda.constants import IGNORE_INDEX
from mtlda.data import cityscapes
from mtlda.data.augment import AugmentConfig
from mtlda.data.batch import collate
from mtlda.data.cityscapes import CityscapesDataset
from mtlda.data.io import DatasetError
from mtlda.data.normals_io import normals_path, write_normals
from mtlda.data.nyudv2 import NYUDv2Dataset
from mtlda.data.synthia import SynthiaDataset
from mtlda.data.toycity import render_sample
from mtlda.data.toycity_export import CITYSCAPES_BASELINE, VAL_INDEX_OFFSET, export_toycity
from mtlda.data.vkitti2 import VKITTI2Dataset, split_frames
from mtlda.geometry import normals_from_depth

H, W = 64, 128
NUM_TRAIN, NUM_VAL = 3, 2
LOADERS = {"cityscapes": CityscapesDataset, "synthia": SynthiaDataset, "vkitti2": VKITTI2Dataset,
           "nyudv2": NYUDv2Dataset}
EXTRA = {"synthia": {"allow_missing": True}, "vkitti2": {"allow_missing": True}}
TASKS = {"cityscapes": ["depth", "normals", "semseg"], "synthia": ["depth", "normals", "semseg"],
         "vkitti2": ["depth", "normals", "semseg"], "nyudv2": ["depth", "edges", "normals", "semseg"]}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("toycity")
    for fmt in LOADERS:
        export_toycity(base / fmt, fmt, height=H, width=W, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=0,
                       with_sequences=fmt == "cityscapes")
    return base


def _load(roots, fmt, split="train", size=(H, W), tasks=None, **options):
    kwargs = {**EXTRA.get(fmt, {}), **options}
    return LOADERS[fmt](roots / fmt, split, tasks or TASKS[fmt], size, class_set_name="toycity", **kwargs)


def _truth(split, i):
    return render_sample((0 if split == "train" else VAL_INDEX_OFFSET) + i, height=H, width=W, seed=0)[0]


@pytest.mark.parametrize("fmt", sorted(LOADERS))
def test_sample_shapes_dtypes_and_labels_match_the_renderer(roots, fmt):
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        ds = _load(roots, fmt, split)
        assert len(ds) == count
        for i in range(count):
            s, truth = ds[i], _truth(split, i)
            assert s.image.shape == (3, H, W) and s.image.dtype == torch.float32
            assert 0 <= float(s.image.min()) and float(s.image.max()) <= 1
            assert s.K.shape == (3, 3) and s.K.dtype == torch.float32
            assert s.targets["semseg"].dtype == torch.int64
            assert torch.equal(s.targets["semseg"], torch.from_numpy(truth.labels).long())
            assert s.targets["depth"].shape == (1, H, W) and s.masks["depth"].dtype == torch.bool
            assert s.targets["normals"].shape == (3, H, W) and s.masks["normals"].shape == (1, H, W)
            tolerance = 0.08 if fmt == "vkitti2" else 1 / 255  # JPEG vs lossless PNG
            assert (s.image - torch.from_numpy(truth.rgb).permute(2, 0, 1) / 255).abs().mean() < tolerance


def _depth_tolerance(fmt, depth, fx):
    if fmt == "cityscapes":  # disparity quantised to 1/256 px: dd = d^2 / (B fx) * 0.5 / 256
        return depth**2 / (CITYSCAPES_BASELINE * fx) * 0.5 / 256 * 1.01 + 1e-5
    if fmt in ("synthia", "vkitti2"):  # centimetres
        return np.full_like(depth, 0.005 + 1e-4)
    return np.full_like(depth, 1e-6)


@pytest.mark.parametrize("fmt", sorted(LOADERS))
def test_depth_is_metric_within_the_format_quantisation(roots, fmt):
    s, truth = _load(roots, fmt)[1], _truth("train", 1)
    mask = s.masks["depth"][0].numpy()
    assert (mask == truth.valid).all()
    depth = s.targets["depth"][0].numpy()
    assert (depth[~mask] == 0).all()
    err = np.abs(depth - truth.depth)[mask]
    assert (err <= _depth_tolerance(fmt, truth.depth[mask], truth.K[0, 0])).all()


@pytest.mark.parametrize("fmt", sorted(LOADERS))
def test_K_reprojects_a_known_point_after_resize(roots, fmt):
    truth = _truth("train", 2)
    v, u = 50, 37
    assert truth.valid[v, u]
    point = truth.depth[v, u] * np.linalg.inv(truth.K) @ np.array([u, v, 1.0])
    for size in ((32, 64), (48, 80), (96, 160)):
        K = _load(roots, fmt, size=size)[2].K.double().numpy()
        pixel = K @ point
        sx, sy = size[1] / W, size[0] / H
        expected = ((u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5)
        assert np.allclose(pixel[:2] / pixel[2], expected, atol=1e-3)


def test_cityscapes_neighbour_frames_are_the_rendered_sequence(roots):
    ds = _load(roots, "cityscapes", frames=(-1, 1))
    s = ds[0]
    assert sorted(s.frames) == [-1, 1]
    rendered = render_sample(0, height=H, width=W, seed=0, offsets=(-1, 1))
    for offset in (-1, 1):
        assert torch.equal(s.frames[offset], torch.from_numpy(rendered[offset].rgb).permute(2, 0, 1).float() / 255)
    batch = collate([ds[0], ds[1]])
    assert batch.frames[1].shape == (2, 3, H, W)


def test_cityscapes_samples_without_neighbours_are_dropped(roots, tmp_path, caplog):
    root = tmp_path / "cs"
    shutil.copytree(roots / "cityscapes", root)
    next((root / "leftImg8bit_sequence" / "train").rglob("*_000020_leftImg8bit.png")).unlink()
    ds = CityscapesDataset(root, "train", ["semseg"], (H, W), class_set_name="toycity", frames=(-1, 1))
    assert len(ds) == NUM_TRAIN - 1
    assert "dropped 1 of 3" in caplog.text


def test_vkitti2_paper_split_holds_exactly_its_listed_frames(roots):
    on_disk = {(s, f) for split in ("train", "val") for s, f in _load(roots, "vkitti2", split).items}
    for split in ("paper_train", "paper_val"):
        assert set(_load(roots, "vkitti2", split).items) == on_disk & split_frames(split)
    assert _load(roots, "vkitti2", "paper_val").items
    with pytest.raises(DatasetError, match="paper_train"):
        _load(roots, "vkitti2", "paper")


def test_nyudv2_ground_truth_normals_and_edges(roots):
    s, truth = _load(roots, "nyudv2")[0], _truth("train", 0)
    mask = s.masks["normals"][0].numpy()
    assert (mask == truth.valid).all()
    cos = (s.targets["normals"].permute(1, 2, 0).numpy() * truth.normals).sum(-1)[mask]
    assert cos.min() > math.cos(math.radians(1.0))  # 8-bit quantisation
    assert torch.equal(s.targets["edges"][0], torch.from_numpy(truth.edges).float())
    assert s.masks["edges"].all()


@pytest.mark.parametrize("fmt", ["cityscapes", "synthia", "vkitti2"])
@pytest.mark.parametrize("scale", [1.0, 0.5, 1.5])
def test_normals_from_depth_agree_with_the_renderer(roots, fmt, scale):
    # at another size than the files' the normals must come from the files' depth: from nearest-resized depth and
    # the rescaled K they were 16 degrees off (median) at 1.5x
    size = (int(H * scale), int(W * scale))
    s, truth = _load(roots, fmt, size=size)[0], _truth("train", 0)
    resized = F.interpolate(torch.from_numpy(truth.normals).permute(2, 0, 1)[None], size=size, mode="nearest-exact")
    inside = F.interpolate(torch.from_numpy(truth.valid)[None, None].float(), size=size, mode="nearest-exact") > 0
    both = s.masks["normals"] & inside[0]
    cos = (s.targets["normals"] * resized[0]).sum(0)[both[0]]
    assert both.sum() > 0.3 * size[0] * size[1]
    assert cos.median() > math.cos(math.radians(3.0))


def test_derived_normals_equal_the_prepared_ones_under_resize_and_zoom(roots, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(roots / "cityscapes", root)
    augment = AugmentConfig(crop=(80, 160), flip=True, scale_range=(1.2, 1.4))
    ds = CityscapesDataset(root, "train", ["normals"], (96, 192), class_set_name="toycity", augment=augment)
    torch.manual_seed(3)
    derived = ds[1]
    whole = CityscapesDataset(root, "train", ["depth"], (H, W), class_set_name="toycity")[1]
    normals, valid = normals_from_depth(whole.targets["depth"][None], whole.K[None], whole.masks["depth"][None])
    write_normals(normals_path(root, ds._depth_file(1)), normals[0].permute(1, 2, 0).numpy(), valid[0, 0].numpy())
    torch.manual_seed(3)
    prepared = ds[1]
    assert torch.equal(derived.masks["normals"], prepared.masks["normals"]) and derived.masks["normals"].any()
    assert torch.allclose(derived.targets["normals"], prepared.targets["normals"], atol=1e-4)


def test_real_class_sets_on_toycity(roots):
    s = CityscapesDataset(roots / "cityscapes", "train", ["semseg"], (H, W), class_set_name="8")[0]
    truth = torch.from_numpy(_truth("train", 0).labels).long()
    sidewalk, person = 1, 7  # no counterpart in the 8 VKITTI2 <-> Cityscapes classes
    assert (s.targets["semseg"][(truth == sidewalk) | (truth == person)] == IGNORE_INDEX).all()
    assert (s.targets["semseg"][truth == 8] == 7).all()  # car -> vehicle
    vk = VKITTI2Dataset(roots / "vkitti2", "train", ["semseg"], (H, W), class_set_name="8", allow_missing=True)[0]
    assert torch.equal(vk.targets["semseg"], s.targets["semseg"])


def test_precomputed_normals_are_preferred(roots, tmp_path):
    root = tmp_path / "syn"
    shutil.copytree(roots / "synthia", root)
    ds = SynthiaDataset(root, "train", ["normals"], (H // 2, W // 2), class_set_name="toycity", allow_missing=True)
    depth_file = ds._depth_file(0)
    normals = np.zeros((H, W, 3), np.float32)
    normals[..., 2] = -1.0
    valid = np.ones((H, W), bool)
    valid[:10] = False
    write_normals(normals_path(root, depth_file), normals, valid)
    s = ds[0]
    assert "depth" not in s.targets
    mask = s.masks["normals"][0]
    assert not mask[:5].any() and mask[5:].all()
    assert (s.targets["normals"][2][mask] == -1.0).all() and (s.targets["normals"][:, ~mask] == 0).all()


def test_depth_files_are_read_only_when_needed(roots, monkeypatch):
    def no_disparity(*args, **kwargs):
        raise AssertionError("disparity read although neither depth nor normals were asked for")

    monkeypatch.setattr(cityscapes, "read_depth", no_disparity)
    s = _load(roots, "cityscapes", tasks=["semseg"])[0]
    assert list(s.targets) == ["semseg"] and not s.masks


def test_augmented_training_samples_collate(roots):
    ds = _load(roots, "cityscapes", augment=AugmentConfig(crop=(48, 96), flip=True, scale_range=(0.8, 1.2),
                                                          color_jitter=0.2))
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch.image.shape == (3, 3, 48, 96) and batch.targets["normals"].shape == (3, 3, 48, 96)
    assert batch.masks["normals"].any()


def test_missing_root_and_folders_name_the_path(roots, tmp_path):
    with pytest.raises(DatasetError, match="is not a folder"):
        CityscapesDataset(tmp_path / "nowhere", "train", ["semseg"], (H, W))
    root = tmp_path / "cs"
    shutil.copytree(roots / "cityscapes", root)
    shutil.rmtree(root / "gtFine")
    with pytest.raises(DatasetError, match=r"gtFine/train is missing.*cityscapes-dataset.com"):
        CityscapesDataset(root, "train", ["semseg"], (H, W), class_set_name="toycity")
    CityscapesDataset(root, "train", ["depth"], (H, W))  # labels are not needed for depth


def test_empty_split_is_a_clear_error(roots, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(roots / "nyudv2", root)
    (root / "gt_sets" / "val.txt").write_text("")
    with pytest.raises(DatasetError, match="split 'val'.*has no samples"):
        NYUDv2Dataset(root, "val", ["semseg"], (H, W))
    with pytest.raises(DatasetError, match="has no split 'test'"):
        SynthiaDataset(roots / "synthia", "test", ["semseg"], (H, W))


def test_partial_synthia_split_fails_unless_allowed(roots):
    with pytest.raises(DatasetError, match="7517 of 7520 Synthia train images are missing"):
        SynthiaDataset(roots / "synthia", "train", ["semseg"], (H, W))


def test_corrupt_files_name_the_file(roots, tmp_path):
    root = tmp_path / "vk"
    shutil.copytree(roots / "vkitti2", root)
    ds = VKITTI2Dataset(root, "val", ["semseg", "depth"], (H, W), allow_missing=True)
    image = root / "Scene01" / "clone" / "frames" / "rgb" / "Camera_0" / "rgb_00001.jpg"
    image.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"rgb_00001\.jpg: the file is empty or corrupt"):
        ds[1]
    (root / "Scene01" / "clone" / "frames" / "depth" / "Camera_0" / "depth_00000.png").unlink()
    with pytest.raises(FileNotFoundError, match="depth_00000.png"):
        ds[0]


def test_loaders_reject_unknown_tasks_and_unsupported_requests(roots):
    with pytest.raises(ValueError, match="unknown task names"):
        _load(roots, "cityscapes", tasks=["S"])
    with pytest.raises(DatasetError, match="no edge labels"):
        _load(roots, "cityscapes", tasks=["edges"])
    with pytest.raises(DatasetError, match="no image sequences"):
        _load(roots, "synthia", frames=(-1, 1))
