"""normals_io, scripts/prepare_normals.py and scripts/check_data.py."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlda.data.catalog import dataset_class
from mtlda.data.cityscapes import CityscapesDataset
from mtlda.data.normals_io import decode_normals, encode_normals, normals_path, read_normals, write_normals
from mtlda.data.toycity_export import export_toycity

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
