"""Loaders reject what they cannot read correctly, and errors keep their message across DataLoader workers."""

import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtlda.data import cityscapes, original_message
from mtlda.data.batch import collate
from mtlda.data.catalog import dataset_class, dataset_names, describe_datasets, register_dataset
from mtlda.data.cityscapes import CityscapesDataset
from mtlda.data.io import DatasetError, write_atomic, write_text_atomic
from mtlda.data.labels import CITYSCAPES_LABELS
from mtlda.data.nyudv2 import NYUDv2Dataset
from mtlda.data.synthia import SynthiaDataset
from mtlda.data.toycity_export import export_toycity

H, W = 32, 64


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base = tmp_path_factory.mktemp("hard")
    for fmt in ("cityscapes", "synthia", "nyudv2"):
        export_toycity(base / fmt, fmt, height=H, width=W, num_train=3, num_val=1)
    return base


def _copy(toy, tmp_path, fmt):
    shutil.copytree(toy / fmt, tmp_path / fmt)
    return tmp_path / fmt


def _first(root, folder, pattern="*.png"):
    return sorted((root / folder).rglob(pattern))[0]


def _edit_png(path, edit):
    values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    values = edit(values)
    cv2.imwrite(str(path), values)


def test_cityscapes_label_ids_outside_the_table_name_file_values_and_fix(toy, tmp_path):
    root = _copy(toy, tmp_path, "cityscapes")
    label = _first(root, "gtFine/train")
    _edit_png(label, lambda v: np.where(np.arange(v.size).reshape(v.shape) % 7 == 0, 40, v).astype(np.uint8))
    ds = CityscapesDataset(root, "train", ["semseg"], (H, W), class_set_name="toycity")
    with pytest.raises(DatasetError, match=rf"{label.name}: label ids \[40\] are not in the label table of "
                                           r"Cityscapes \(0..33\).*gtFine_trainvaltest.zip"):
        ds[0]


def test_synthia_16_bit_ids_outside_the_table(toy, tmp_path):
    root = _copy(toy, tmp_path, "synthia")
    label = _first(root, "GT/LABELS")

    def edit(values):
        values[0, :3, 2] = [23, 300, 23]  # channel 2 of OpenCV's BGR is the file's first channel (class ids)
        return values

    _edit_png(label, edit)
    ds = SynthiaDataset(root, "train", ["semseg"], (H, W), allow_missing=True)
    with pytest.raises(DatasetError, match=r"label ids \[23, 300\] are not in the label table of Synthia \(0..22\)"):
        ds[0]


def test_nyudv2_ids_outside_0_to_40(toy, tmp_path):
    root = _copy(toy, tmp_path, "nyudv2")
    _edit_png(root / "segmentation" / "000001.png", lambda v: np.full_like(v, 41))
    with pytest.raises(DatasetError, match=r"000001.png: label ids \[41\].*NYUDv2 \(0..40\)"):
        NYUDv2Dataset(root, "train", ["semseg"], (H, W))[1]


def test_depth_and_disparity_of_another_size_name_both_sizes(toy, tmp_path):
    root = _copy(toy, tmp_path, "cityscapes")
    disparity = _first(root, "disparity/train")
    _edit_png(disparity, lambda v: cv2.resize(v, (W // 2, H // 2), interpolation=cv2.INTER_NEAREST))
    ds = CityscapesDataset(root, "train", ["depth"], (H, W))
    with pytest.raises(DatasetError, match=rf"disparity map .*{disparity.name} is 32x16 but its image is 64x32"):
        ds[0]
    with pytest.raises(DatasetError, match="is 32x16 but its image is 64x32"):
        CityscapesDataset.depth_for_normals(root, disparity)
    root = _copy(toy, tmp_path, "synthia")
    depth = _first(root, "Depth/Depth")
    _edit_png(depth, lambda v: v[:, :-1])
    with pytest.raises(DatasetError, match="is 63x32 but its image is 64x32"):
        SynthiaDataset(root, "train", ["depth"], (H, W), allow_missing=True)[0]


def _train_ids_of(label_ids):
    table = np.full(256, 255, dtype=np.uint8)
    for _, label_id, train_id, _, _ in CITYSCAPES_LABELS:
        table[label_id] = train_id
    return table[label_ids]


def test_mmsegmentation_train_ids_are_read_when_label_ids_are_absent(toy, tmp_path):
    root = _copy(toy, tmp_path, "cityscapes")
    expected = {name: [s.targets["semseg"] for s in CityscapesDataset(root, "train", ["semseg"], (H, W),
                                                                        class_set_name=name)]
                for name in ("19", "8", "toycity")}
    for label in sorted((root / "gtFine").rglob("*_gtFine_labelIds.png")):
        train_ids = label.with_name(label.name.replace("_labelIds", "_labelTrainIds"))
        cv2.imwrite(str(train_ids), _train_ids_of(cv2.imread(str(label), cv2.IMREAD_UNCHANGED)))
        label.unlink()
    for name, targets in expected.items():
        ds = CityscapesDataset(root, "train", ["semseg"], (H, W), class_set_name=name)
        assert all(torch.equal(ds[i].targets["semseg"], t) for i, t in enumerate(targets)), name
    bad = sorted((root / "gtFine" / "train").rglob("*_labelTrainIds.png"))[0]
    _edit_png(bad, lambda v: np.full_like(v, 19))
    with pytest.raises(DatasetError, match=r"label ids \[19\] are not in the label table of Cityscapes trainIds "
                                           r"\(0..18, 255\)"):
        CityscapesDataset(root, "train", ["semseg"], (H, W))[0]


def test_label_ids_win_over_train_ids(toy, tmp_path):
    root = _copy(toy, tmp_path, "cityscapes")
    label = _first(root, "gtFine/train")
    cv2.imwrite(str(label.with_name(label.name.replace("_labelIds", "_labelTrainIds"))),
                np.zeros((H, W), np.uint8))  # all "road": would differ from the scene
    path, is_train_ids = cityscapes.label_file(root, "train", label.parent.name, label.name[: -len(
        "_gtFine_labelIds.png")])
    assert path == label and not is_train_ids
    semseg = CityscapesDataset(root, "train", ["semseg"], (H, W))[0].targets["semseg"]
    assert len(semseg.unique()) > 3


def test_the_worker_message_is_recovered(toy, tmp_path):
    root = _copy(toy, tmp_path, "cityscapes")
    broken = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[2]
    broken.write_bytes(b"\x89PNG truncated")
    ds = CityscapesDataset(root, "train", ["semseg"], (H, W), class_set_name="toycity")
    with pytest.raises(DatasetError) as direct:
        ds[2]
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate)
    with pytest.raises(DatasetError) as caught:
        list(loader)
    assert str(caught.value).startswith("Caught DatasetError in DataLoader worker process")
    assert original_message(caught.value) == str(direct.value)
    assert broken.name in original_message(caught.value) and "\n" not in original_message(caught.value)
    assert original_message(ValueError("plain")) == "plain"


def test_write_atomic_syncs_before_renaming_and_never_truncates(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    path = tmp_path / "deep" / "file.txt"
    write_text_atomic(path, "first\n")
    assert path.read_text() == "first\n" and events == ["fsync", "replace"]

    def crash(a, b):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(path, b"second")
    assert path.read_text() == "first\n" and sorted(p.name for p in path.parent.iterdir()) == ["file.txt"]


def test_the_registry_lists_every_data_set_and_rejects_unknown_names():
    assert dataset_names() == ("cityscapes", "synthia", "vkitti2", "nyudv2")
    assert dataset_names(toycity=True)[0] == "toycity"
    assert dataset_names(sequences=True) == ("cityscapes", "vkitti2")
    assert "$VKITTI2_DIR" in describe_datasets()
    with pytest.raises(ValueError, match=r"unknown data set 'cityscape' \(did you mean 'cityscapes'\?\); "
                                         "registered: cityscapes, synthia, vkitti2, nyudv2"):
        dataset_class("cityscape")

    class Impostor(CityscapesDataset):
        pass

    with pytest.raises(ValueError, match="'cityscapes' is already taken"):
        register_dataset(Impostor)
    for name in dataset_names():
        cls = dataset_class(name)
        assert cls.name == name and cls.root_variable.endswith("_DIR") and cls.max_depth > 0
        assert cls.default_class_set in cls.class_sets and cls.official_counts
        assert cls.depth_kind in cls.sources and cls.label_kind in cls.sources
