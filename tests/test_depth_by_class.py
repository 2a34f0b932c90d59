"""Depth errors split by ground-truth class: analytic cases, the whole-image median scaling, agreement with the
depth metric."""

from __future__ import annotations

import pytest
import torch

from mtlda.depth_by_class import depth_by_class_table, depth_task
from mtlda.errors import UserInputError
from mtlda.metrics.depth import DepthByClassMetric, DepthMetric
from mtlda.schema import DepthProtocol

RAW = DepthProtocol(median_scaling=False, per_image=False, min_depth=1e-3, max_depth=80.0)
SCALED = DepthProtocol(median_scaling=True, per_image=False, min_depth=1e-3, max_depth=80.0)


def halves(h: int = 4, w: int = 8) -> torch.Tensor:
    """(1, H, W) labels: class 0 on the left half, class 1 on the right."""
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[..., w // 2:] = 1
    return labels


def test_each_class_gets_its_own_errors():
    gt = torch.full((1, 1, 4, 8), 10.0)
    pred = gt.clone()
    pred[..., 4:] = 15.0
    metric = DepthByClassMetric(3, RAW)
    metric.update(pred, gt, halves())
    rows = metric.per_class()
    assert sorted(rows) == [0, 1]  # class 2 has no pixel
    assert rows[0] == pytest.approx({"share": 50.0, "abs_rel": 0.0, "bias": 0.0, "rmse": 0.0})
    assert rows[1] == pytest.approx({"share": 50.0, "abs_rel": 0.5, "bias": 0.5, "rmse": 5.0})
    assert metric.compute() == pytest.approx({"abs_rel": 0.25})


def test_median_scaling_uses_the_whole_image_not_one_class():
    gt = torch.full((1, 1, 4, 8), 10.0)
    pred = torch.full_like(gt, 20.0)
    pred[..., 5:] = 40.0  # 3/8 of the image, 3/4 of class 1: class 1's own median would be 40
    metric = DepthByClassMetric(2, SCALED)
    metric.update(pred, gt, halves())
    rows = metric.per_class()
    # the image's median is 20 -> scale 0.5: class 0 exact, 3/4 of class 1 at 20 m (+100 %); a per-class median
    # would give class 1 an AbsRel of 0.125
    assert rows[0]["abs_rel"] == pytest.approx(0.0)
    assert rows[1]["abs_rel"] == pytest.approx(0.75) and rows[1]["bias"] == pytest.approx(0.75)


def test_unlabelled_and_invalid_pixels_are_left_out():
    gt = torch.full((1, 1, 4, 8), 10.0)
    gt[..., 0, :] = 0.0  # no depth on the first row
    labels = halves()
    labels[..., 1, :] = 255
    pred = torch.full_like(gt, 12.0)
    pred[..., 1, :] = 30.0  # unlabelled: would raise class errors if it were counted
    metric = DepthByClassMetric(2, RAW)
    metric.update(pred, gt, labels, mask=torch.ones_like(gt, dtype=torch.bool))
    rows = metric.per_class()
    assert rows[0] == pytest.approx({"share": 50.0, "abs_rel": 0.2, "bias": 0.2, "rmse": 2.0})
    assert rows[1] == pytest.approx(rows[0])


def test_pooled_abs_rel_equals_the_depth_metric_per_pixel():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 1, 6, 10, generator=g) * 30 + 1
    pred = gt * (1 + 0.3 * torch.randn(gt.shape, generator=g)).clamp(min=0.2)
    labels = torch.randint(0, 4, (3, 6, 10), generator=g)
    by_class, plain = DepthByClassMetric(4, SCALED), DepthMetric(SCALED)
    by_class.update(pred, gt, labels)
    plain.update(pred, gt)
    assert by_class.compute()["abs_rel"] == pytest.approx(plain.compute()["abs_rel"], rel=1e-9)
    shares = [row["share"] for row in by_class.per_class().values()]
    assert sum(shares) == pytest.approx(100.0)


def test_wrong_shapes_and_protocols_are_refused():
    metric = DepthByClassMetric(2, RAW)
    with pytest.raises(ValueError, match="labels must have shape"):
        metric.update(torch.ones(1, 1, 4, 8), torch.ones(1, 1, 4, 8), torch.zeros(1, 4, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must have shape \(B, 1, h, w\)"):
        metric.update(torch.ones(1, 3, 4, 8), torch.ones(1, 1, 4, 8), torch.zeros(1, 4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="0 < min_depth < max_depth"):
        DepthByClassMetric(2, DepthProtocol(min_depth=10.0, max_depth=1.0))


def test_the_table_has_a_line_per_class_and_the_overall_value():
    gt = torch.full((1, 1, 4, 8), 10.0)
    rows = {name: DepthByClassMetric(2, RAW) for name in ("prior", "model")}
    rows["prior"].update(gt * 1.1, gt, halves())
    rows["model"].update(gt, gt, halves())
    table = depth_by_class_table(rows, ("road", "car"))
    lines = table.splitlines()
    assert lines[0].startswith("| class | pixels % | prior: AbsRel")
    assert lines[2] == "| road | 50.0 | 0.100 | +0.100 | 1.00 | 0.000 | +0.000 | 0.00 |"
    assert lines[-1] == "| all (pooled pixels) | 100 | 0.100 | - | - | 0.000 | - | - |"


def test_a_model_without_depth_is_refused():
    class Seg:
        target_name = "semseg"

    with pytest.raises(UserInputError, match="needs a model with a depth output"):
        depth_task({"semseg": Seg()})
