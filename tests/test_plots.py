import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from mtlda.plots import (
    CURVE_PANEL_PX,
    IOU_BARS_PX,
    confusion_matrix_image,
    confusion_matrix_size,
    curve_title,
    default_curve_tags,
    per_class_iou_bars,
    training_curves,
)


def read_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None
    return image


def seed_scalars(offset: float) -> dict[str, list[tuple[int, float]]]:
    steps = range(10, 101, 10)
    return {
        "train/total": [(s, 2.0 / s + offset) for s in steps],
        "train/semseg/weighted": [(s, 1.0 / s + offset) for s in steps],
        "train/semseg/s0": [(s, 1.0 / s) for s in steps],
        "val/semseg/miou": [(50, 40.0 + offset), (100, 60.0 + offset)],
        "val/semseg/iou_road": [(50, 80.0), (100, 90.0)],
        "lr/model/encoder": [(s, 1e-4) for s in steps],
    }


def test_default_tags_and_titles():
    tags = default_curve_tags(list(seed_scalars(0)))
    assert tags == ["train/total", "train/semseg/weighted", "val/semseg/miou"]
    assert curve_title("train/semseg/weighted") == "semseg weighted (training)"
    assert curve_title("train/total") == "total loss (training)"
    assert curve_title("val/depth/abs_rel") == "depth abs_rel (validation)"


def test_training_curves_png_size_per_subplot_grid(tmp_path):
    runs = {"mtl": [seed_scalars(0.0), seed_scalars(0.1), seed_scalars(0.3)], "stl": [seed_scalars(0.5)]}
    out = training_curves(runs, tmp_path / "sub" / "curves.png", band="std", smoothing=0.5, columns=2)
    assert out == tmp_path / "sub" / "curves.png"
    width, height = CURVE_PANEL_PX
    assert read_png(out).shape == (2 * height, 2 * width, 3)  # 3 default tags on a 2-column grid
    single = training_curves(runs, tmp_path / "one.png", tags=["val/semseg/miou"], panel_px=(300, 200))
    assert read_png(single).shape == (200, 300, 3)
    assert not list(tmp_path.glob(".*partial*"))


def test_training_curves_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        training_curves({"a": [seed_scalars(0)]}, tmp_path / "x.png", band="iqr")
    with pytest.raises(ValueError):
        training_curves({"a": [{"lr/model/encoder": [(1, 1e-4)]}]}, tmp_path / "x.png")
    with pytest.raises(ValueError):
        training_curves({}, tmp_path / "x.png")


def test_per_class_iou_bars_with_error_bars(tmp_path):
    iou = {"mtl": {"road": 90.0, "car": 60.0, "person": float("nan")}, "stl": {"road": 85.0, "car": 55.0}}
    stds = {"mtl": {"road": 1.0, "car": 2.5}}
    image = read_png(per_class_iou_bars(iou, tmp_path / "iou.png", stds=stds))
    assert image.shape == (IOU_BARS_PX[1], IOU_BARS_PX[0], 3)
    assert (image.reshape(-1, 3) != 255).any(axis=1).mean() > 0.02  # bars drawn, not a blank canvas


def test_confusion_matrix_image_sizes_and_normalisations(tmp_path):
    confusion = np.array([[50, 5, 0], [10, 40, 0], [0, 0, 0]])
    names = ["road", "car", "sky"]
    side = confusion_matrix_size(3)[0]
    assert read_png(confusion_matrix_image(confusion, names, tmp_path / "c.png")).shape == (side, side, 3)
    assert confusion_matrix_size(19) == (260 + 36 * 19,) * 2
    counts = confusion_matrix_image(confusion, names, tmp_path / "n.png", normalise=None, size_px=(400, 300))
    assert read_png(counts).shape == (300, 400, 3)
    with pytest.raises(ValueError):
        confusion_matrix_image(confusion, names[:2], tmp_path / "x.png")
    with pytest.raises(ValueError):
        confusion_matrix_image(confusion, names, tmp_path / "x.png", normalise="rows")
    assert confusion.tolist() == [[50, 5, 0], [10, 40, 0], [0, 0, 0]]


def test_a_band_over_seeds_of_unequal_length_warns_of_nothing(tmp_path):
    """The ± band is the sample std where at least two seeds have a value, zero where one has."""
    short = {"val/semseg/miou": [(1, 10.0), (2, 20.0)]}
    long = {"val/semseg/miou": [(1, 12.0), (2, 22.0), (3, 30.0)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training_curves({"a": [short, long]}, tmp_path / "band.png", tags=["val/semseg/miou"], band="std")
