"""build_dataset / dataset_info and the toycity cache."""

import dataclasses

import numpy as np
import pytest
import torch

from mtlda.data import toycity_export
from mtlda.data.io import DatasetError
from mtlda.data.labels import TOYCITY_CLASSES
from mtlda.data.normals_io import normals_path, write_normals
from mtlda.data.registry import build_dataset, dataset_info
from mtlda.schema import DataConfig, ToycityConfig


def _cfg(tmp_path, fmt="cityscapes", **data) -> DataConfig:
    toy = ToycityConfig(format=fmt, num_train=2, num_val=2, height=32, width=64, cache_dir=str(tmp_path / "cache"))
    return DataConfig(dataset="toycity", height=32, width=64, toycity=toy, **data)


def test_toycity_is_generated_once_then_read_from_the_cache(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, val_height=16, val_width=32)
    train = build_dataset(cfg, "train", True, ["semseg", "depth", "normals"])
    val = build_dataset(cfg, "val", False, ["semseg"])
    assert len(train) == 2 and len(val) == 2
    assert val[0].image.shape == (3, 16, 32) and train[0].image.shape == (3, 32, 64)
    folders = [p for p in (tmp_path / "cache").iterdir()]
    assert [p.name for p in folders] == [toycity_export.cache_folder(cfg.toycity).name]  # no temporary leftovers
    assert folders[0].name.endswith(f"_v{toycity_export.GENERATOR_VERSION}")

    def no_render(*args, **kwargs):
        raise AssertionError("toycity rendered again although it is cached")

    monkeypatch.setattr(toycity_export, "render_sample", no_render)
    assert torch.equal(build_dataset(cfg, "val", False, ["semseg"])[1].image, val[1].image)


def test_normals_root_reads_normals_written_outside_the_data_set(tmp_path):
    cfg = _cfg(tmp_path, val_height=32, val_width=64)
    plain = build_dataset(cfg, "val", False, ["normals"])
    elsewhere = tmp_path / "normals"
    normals = np.zeros((32, 64, 3), np.float32)
    normals[..., 1] = -1.0
    write_normals(normals_path(plain.root, plain._depth_file(0), elsewhere), normals, np.ones((32, 64), bool))
    read = build_dataset(dataclasses.replace(cfg, normals_root=str(elsewhere)), "val", False, ["normals"])[0]
    assert torch.equal(read.targets["normals"][1], torch.full((32, 64), -1.0))
    assert not torch.equal(plain[0].targets["normals"], read.targets["normals"])
    with pytest.raises(DatasetError, match=r"no normals_mtlda/ folder.*prepare_normals\.py"):
        build_dataset(dataclasses.replace(cfg, normals_root=str(tmp_path / "absent")), "val", False, ["normals"])


def test_a_new_generator_version_regenerates(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, fmt="nyudv2")
    first = toycity_export.ensure_toycity(cfg.toycity)
    monkeypatch.setattr(toycity_export, "GENERATOR_VERSION", "test-next")
    second = toycity_export.ensure_toycity(cfg.toycity)
    assert first != second and (second / toycity_export.METADATA_FILE).is_file() and first.is_dir()


def test_sequences_are_added_on_demand(tmp_path):
    cfg = _cfg(tmp_path, frames=[-1, 1])
    root = toycity_export.ensure_toycity(cfg.toycity)
    assert not (root / "leftImg8bit_sequence").exists()
    train = build_dataset(cfg, "train", True, ["semseg"])
    assert sorted(train[0].frames) == [-1, 1]
    assert (root / "leftImg8bit_sequence").is_dir()
    assert build_dataset(cfg, "val", False, ["semseg"])[0].frames == {}


def test_toycity_frames_need_the_cityscapes_format(tmp_path):
    with pytest.raises(DatasetError, match="cityscapes format only"):
        build_dataset(_cfg(tmp_path, fmt="vkitti2", frames=[-1, 1]), "train", True, ["semseg"])


@pytest.mark.parametrize("fmt", ["synthia", "vkitti2", "nyudv2"])
def test_every_format_reads_toycity_classes(tmp_path, fmt):
    ds = build_dataset(_cfg(tmp_path, fmt=fmt), "val", False, ["semseg", "depth"])
    labels = ds[0].targets["semseg"]
    assert set(labels.unique().tolist()) <= set(range(len(TOYCITY_CLASSES)))


def test_dataset_info(tmp_path):
    info = dataset_info(_cfg(tmp_path))
    assert info.num_classes == 9 and info.class_names == TOYCITY_CLASSES
    assert info.palette.shape == (9, 3) and info.palette.dtype == np.uint8
    assert info.has_sequences and not info.has_normals_gt and info.depth_cap == 150.0
    assert not dataset_info(_cfg(tmp_path, fmt="synthia")).has_sequences
    assert dataset_info(_cfg(tmp_path, fmt="nyudv2")).has_normals_gt
    assert dataset_info(_cfg(tmp_path, fmt="vkitti2", classes=8)).class_names[-1] == "vehicle"
    real = dataset_info(DataConfig(dataset="cityscapes", classes=16))
    assert real.num_classes == 16 and real.has_sequences
    assert dataset_info(DataConfig(dataset="nyudv2")).num_classes == 40


def test_missing_roots_name_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("SYNTHIA_DIR", raising=False)
    with pytest.raises(DatasetError, match="export SYNTHIA_DIR="):
        build_dataset(DataConfig(dataset="synthia"), "train", True, ["semseg"])
    monkeypatch.setenv("SYNTHIA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="from SYNTHIA_DIR.*does not exist"):
        build_dataset(DataConfig(dataset="synthia"), "train", True, ["semseg"])
    monkeypatch.setenv("SYNTHIA_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="RGB is missing.*synthia-dataset.net"):
        build_dataset(DataConfig(dataset="synthia"), "train", True, ["semseg"])


def test_bad_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown data.dataset"):
        dataset_info(DataConfig(dataset="kitti"))
    cfg = _cfg(tmp_path)
    with pytest.raises(ValueError, match="unknown data.toycity.format"):
        dataset_info(dataclasses.replace(cfg, toycity=dataclasses.replace(cfg.toycity, format="kitti")))
    with pytest.raises(ValueError, match="choose data.classes"):
        dataset_info(dataclasses.replace(cfg, classes=13))
