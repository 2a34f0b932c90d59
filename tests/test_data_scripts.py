"""normals_io, scripts/prepare_normals.py and scripts/check_data.py."""

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlda.data import synthia
from mtlda.data.catalog import dataset_class
from mtlda.data.cityscapes import CityscapesDataset
from mtlda.data.io import DatasetError
from mtlda.data.labels import CITYSCAPES_LABELS
from mtlda.data.normals_io import decode_normals, encode_normals, normals_path, read_normals, write_normals
from mtlda.data.synthia import SynthiaDataset
from mtlda.data.toycity_export import export_toycity

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    return importlib.import_module(f"mtlda.commands.{name}")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base = tmp_path_factory.mktemp("toy")
    for fmt in ("cityscapes", "vkitti2", "synthia", "nyudv2"):
        export_toycity(base / fmt, fmt, height=32, width=64, num_train=2, num_val=1)
    return base


def test_normals_encoding_round_trip_and_invalid_pixels(tmp_path):
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(20, 30, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    valid = rng.random((20, 30)) > 0.2
    codes = encode_normals(normals, valid)
    assert codes.dtype == np.uint16 and (codes[~valid] == 0).all() and (codes[valid] > 0).all()
    decoded, decoded_valid = decode_normals(codes)
    assert (decoded_valid == valid).all()
    assert np.abs(decoded[valid] - normals[valid]).max() < 1e-4
    path = tmp_path / "a" / "n.png"
    write_normals(path, normals, valid)
    from_file, file_valid = read_normals(path)
    assert (file_valid == valid).all() and np.abs(from_file[valid] - normals[valid]).max() < 1e-4
    assert [p.name for p in path.parent.iterdir()] == ["n.png"]  # no temporary file left


@pytest.mark.parametrize("fmt", ["cityscapes", "vkitti2"])
def test_prepare_normals_writes_resumably_and_loaders_use_the_files(toy, tmp_path, fmt):
    prepare = _script("prepare_normals")
    root = tmp_path / fmt
    shutil.copytree(toy / fmt, root)
    written, skipped = prepare.prepare_normals(fmt, root, "cpu", batch_size=2, progress=False)
    files = dataset_class(fmt).depth_files(root)
    assert (written, skipped) == (len(files), 0) and len(files) == 3
    first = normals_path(root, files[0])
    assert first.is_file()
    stamp = first.stat().st_mtime_ns
    assert prepare.prepare_normals(fmt, root, "cpu", progress=False) == (0, 3)
    assert first.stat().st_mtime_ns == stamp
    first.unlink()
    assert prepare.prepare_normals(fmt, root, "cpu", progress=False) == (1, 2)


def test_precomputed_normals_match_on_the_fly_normals(toy, tmp_path):
    prepare = _script("prepare_normals")
    root = tmp_path / "cs"
    shutil.copytree(toy / "cityscapes", root)
    on_the_fly = CityscapesDataset(root, "train", ["normals"], (32, 64), class_set_name="toycity")[0]
    prepare.prepare_normals("cityscapes", root, "cpu", progress=False)
    from_file = CityscapesDataset(root, "train", ["normals"], (32, 64), class_set_name="toycity")[0]
    assert torch.equal(on_the_fly.masks["normals"], from_file.masks["normals"])
    assert (on_the_fly.targets["normals"] - from_file.targets["normals"]).abs().max() < 1e-4


def test_prepare_normals_rejects_what_it_cannot_do(toy, tmp_path):
    prepare = _script("prepare_normals")
    with pytest.raises(ValueError, match="ground-truth normals"):
        prepare.prepare_normals("nyudv2", toy / "nyudv2")
    with pytest.raises(ValueError, match="no depth files"):
        prepare.prepare_normals("synthia", tmp_path)


@pytest.mark.parametrize("fmt", ["cityscapes", "synthia", "vkitti2", "nyudv2"])
def test_check_data_accepts_a_complete_folder(toy, fmt, capsys):
    check = _script("check_data")
    assert check.main(["--dataset", fmt, "--root", str(toy / fmt)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "depth" in out


def test_check_data_reports_each_problem_on_one_line(toy, tmp_path, capsys):
    check = _script("check_data")
    root = tmp_path / "cs"
    shutil.copytree(toy / "cityscapes", root)
    shutil.rmtree(root / "camera" / "val")
    next((root / "disparity" / "train").rglob("*.png")).unlink()
    label = sorted((root / "gtFine" / "train").rglob("*.png"))[0]
    label.write_bytes(b"broken")
    assert check.main(["--dataset", "cityscapes", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("problem: ") for line in err)
    text = "\n".join(err)
    assert "camera/val" in text and "cityscapes-dataset.com" in text
    assert "1 of 2 train images have no disparity file" in text
    assert f"{label.name}: the file is empty or corrupt" in text


def test_check_data_finds_labels_outside_the_table(toy, tmp_path, capsys):
    import cv2

    check = _script("check_data")
    root = tmp_path / "nyu"
    shutil.copytree(toy / "nyudv2", root)
    label = root / "segmentation" / "000000.png"
    values = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    values[0, 0] = 77
    cv2.imwrite(str(label), values)
    assert check.main(["--dataset", "nyudv2", "--root", str(root)]) == 2
    assert "label ids [77] are not in the label table" in capsys.readouterr().err


def test_scripts_fail_with_one_line_and_exit_code_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "check_data.py"), "--dataset", "synthia",
                             "--root", str(tmp_path / "missing")], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"problem: {tmp_path / 'missing'} is not a folder; point --root at "
                                                  "the extracted synthia data set"]


def test_check_data_spot_checks_a_spread_of_samples_and_full_decodes_all(tmp_path, capsys):
    check = _script("check_data")
    root = tmp_path / "cs"
    export_toycity(root, "cityscapes", height=32, width=64, num_train=12, num_val=1)
    stems = sorted(p.name for p in (root / "disparity" / "train").rglob("*.png"))
    corrupt = next((root / "disparity" / "train").rglob(stems[1]))  # index 1: not among the 8 spread samples
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert check.main(["--dataset", "cityscapes", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "cityscapes train: decoded 8 of 8 checked samples of 12 (spot check" in out
    assert "decoded 9 of 9 checked samples" in out
    assert check.main(["--dataset", "cityscapes", "--root", str(root), "--full"]) == 2
    captured = capsys.readouterr()
    problems = [line for line in captured.err.splitlines() if line.startswith("problem: ")]  # without the progress bar
    assert problems == [f"problem: cannot decode Cityscapes disparity map {corrupt}: the file "
                                                 "is empty or corrupt; re-download or regenerate it"]
    assert "decoded 12 of 13 checked samples (every sample)" in captured.out


def test_check_data_names_the_archive_of_each_missing_folder(toy, tmp_path, capsys):
    check = _script("check_data")
    root = tmp_path / "cs"
    shutil.copytree(toy / "cityscapes", root)
    shutil.rmtree(root / "camera" / "val")
    shutil.rmtree(root / "disparity" / "val")
    assert check.main(["--dataset", "cityscapes", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"problem: missing {root / 'disparity' / 'val'}; download disparity_trainvaltest.zip from "
                   f"https://www.cityscapes-dataset.com/downloads/ and extract it into {root}",
                   f"problem: missing {root / 'camera' / 'val'}; download camera_trainvaltest.zip from "
                   f"https://www.cityscapes-dataset.com/downloads/ and extract it into {root}"]


def test_check_data_reports_labels_and_sizes_that_do_not_fit(toy, tmp_path, capsys):
    import cv2

    check = _script("check_data")
    root = tmp_path / "syn"
    shutil.copytree(toy / "synthia", root)
    depth = sorted((root / "Depth" / "Depth").glob("*.png"))[0]
    cv2.imwrite(str(depth), cv2.imread(str(depth), cv2.IMREAD_UNCHANGED)[:16])
    label = sorted((root / "GT" / "LABELS").glob("*.png"))[1]
    values = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    values[..., 2] = 99
    cv2.imwrite(str(label), values)
    assert check.main(["--dataset", "synthia", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{depth} is 64x16 but its image is 64x32" in err
    assert f"{label}: label ids [99] are not in the label table of Synthia (0..22)" in err


def test_check_data_accepts_mmsegmentation_train_ids(toy, tmp_path, capsys):
    import cv2

    check = _script("check_data")
    root = tmp_path / "cs"
    shutil.copytree(toy / "cityscapes", root)
    table = np.full(256, 255, dtype=np.uint8)
    for _, label_id, train_id, _, _ in CITYSCAPES_LABELS:
        table[label_id] = train_id
    for label in sorted((root / "gtFine").rglob("*_gtFine_labelIds.png")):
        target = label.with_name(label.name.replace("_labelIds", "_labelTrainIds"))
        cv2.imwrite(str(target), table[cv2.imread(str(label), cv2.IMREAD_UNCHANGED)])
        label.unlink()
    assert check.main(["--dataset", "cityscapes", "--root", str(root)]) == 0
    assert "2 of 2 train label maps are mmsegmentation *_gtFine_labelTrainIds.png files" in capsys.readouterr().out


def test_check_data_notes_vkitti2_colours_outside_the_palette(toy, tmp_path, capsys):
    import cv2

    check = _script("check_data")
    root = tmp_path / "vk"
    shutil.copytree(toy / "vkitti2", root)
    label = sorted(root.rglob("classgt_*.png"))[0]
    values = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    values[:4] = 0  # Undefined
    cv2.imwrite(str(label), values)
    assert check.main(["--dataset", "vkitti2", "--root", str(root)]) == 0
    assert f"note: {label}: 12.5 % of its pixels have colours outside the 14-class palette ((0, 0, 0)); they are " \
           "ignored" in capsys.readouterr().out


def test_check_data_falls_back_to_the_environment_variable(toy, monkeypatch, capsys):
    check = _script("check_data")
    monkeypatch.setenv("NYUDV2_DIR", str(toy / "nyudv2"))
    assert check.main(["--dataset", "nyudv2"]) == 0
    assert f"--root not given: using NYUDV2_DIR={toy / 'nyudv2'}" in capsys.readouterr().out
    monkeypatch.delenv("NYUDV2_DIR")
    with pytest.raises(DatasetError, match="no --root given and no folder for nyudv2: export NYUDV2_DIR="):
        check.main(["--dataset", "nyudv2"])
    with pytest.raises(ValueError, match="--variation applies to vkitti2 only"):
        check.main(["--dataset", "nyudv2", "--root", str(toy / "nyudv2"), "--variation", "fog"])


def test_prepare_normals_out_serves_a_read_only_data_set(toy, tmp_path, monkeypatch):
    prepare = _script("prepare_normals")
    out = tmp_path / "normals"
    before = sorted(p for p in (toy / "synthia").rglob("*"))
    assert prepare.prepare_normals("synthia", toy / "synthia", "cpu", progress=False, out=out) == (3, 0)
    assert sorted(p for p in (toy / "synthia").rglob("*")) == before  # nothing written into the data set
    assert len(list((out / "normals_mtlda").rglob("*.png"))) == 3
    check = _script("check_data")
    assert check.main(["--dataset", "synthia", "--root", str(toy / "synthia"), "--normals-root", str(out)]) == 0

    def no_depth(*args, **kwargs):
        raise AssertionError("depth read although precomputed normals exist")

    monkeypatch.setattr(synthia, "read_depth", no_depth)
    ds = SynthiaDataset(toy / "synthia", "train", ["normals"], (32, 64), allow_missing=True, normals_root=out)
    assert ds[0].masks["normals"].any()
