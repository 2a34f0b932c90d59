import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlda.constants import IGNORE_INDEX
from mtlda.metrics import (
    DepthMetric,
    EdgesMetric,
    NormalsMetric,
    SegmentationMetric,
    delta_uncertainty,
    multitask_delta,
)
from mtlda.schema import DepthProtocol

HALVES = (slice(0, 1), slice(1, None))


def assert_same_results(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-9), (k, a[k], b[k])


def check_streaming_and_reduction(make_metric, pred: torch.Tensor, target: torch.Tensor,
                                  mask: torch.Tensor | None = None) -> None:
    """Two halves streamed into one metric, and two 'ranks' whose summed states are loaded, equal one pass."""
    whole = make_metric()
    whole.update(pred, target, mask)
    streamed = make_metric()
    ranks = [make_metric(), make_metric()]
    for i, sl in enumerate(HALVES):
        part_mask = None if mask is None else mask[sl]
        streamed.update(pred[sl], target[sl], part_mask)
        ranks[i].update(pred[sl], target[sl], part_mask)
    assert_same_results(streamed.compute(), whole.compute())
    reduced = make_metric()
    reduced.load_state([a + b for a, b in zip(ranks[0].state_tensors(), ranks[1].state_tensors())])
    assert_same_results(reduced.compute(), whole.compute())


# ---------------------------------------------------------------- segmentation


def test_segmentation_identity_is_perfect():
    labels = torch.randint(0, 4, (2, 5, 7))
    labels[0, 0] = IGNORE_INDEX
    m = SegmentationMetric(4, ["a", "b", "c", "d"])
    m.update(F.one_hot(labels.clamp(max=3), 4).permute(0, 3, 1, 2).float(), labels)
    out = m.compute()
    assert out["miou"] == 100 and out["pixel_acc"] == 100 and out["iou_a"] == 100


def test_segmentation_hand_computed():
    labels = torch.tensor([[[0, 0, 1, 1, IGNORE_INDEX]]])
    pred = torch.tensor([[[0, 1, 1, 2, 2]]])
    m = SegmentationMetric(4)
    m.update(pred, labels)
    out = m.compute()
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 1, FP 1, FN 1 -> 1/3; class 2: FP 1 -> 0; class 3 absent -> NaN
    assert math.isclose(out["iou_0"], 50) and math.isclose(out["iou_1"], 100 / 3) and out["iou_2"] == 0
    assert math.isnan(out["iou_3"])
    assert math.isclose(out["miou"], (50 + 100 / 3 + 0) / 3)
    assert math.isclose(out["pixel_acc"], 50)


def test_segmentation_upsamples_probabilities_and_rejects_bad_labels():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[..., 2:] = 1
    probs = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): left half class 0, right half class 1
    m = SegmentationMetric(2)
    m.update(probs, labels)
    assert m.compute()["miou"] == 100
    with pytest.raises(ValueError, match="labels must lie"):
        m.update(probs, torch.full((1, 4, 4), 7))


def test_segmentation_equals_official_cityscapes_evaluation(tmp_path):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as official
    from cityscapesscripts.helpers.labels import id2label, trainId2label
    from cityscapesscripts.helpers.labels import labels as cs_labels
    from PIL import Image

    rng = np.random.default_rng(0)
    ids = np.array([l.id for l in cs_labels if l.id >= 0])
    id_to_train = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for l in cs_labels:
        if l.id >= 0 and not l.ignoreInEval:
            id_to_train[l.id] = l.trainId
    gt_files, pred_files, gts, preds = [], [], [], []
    for i in range(3):
        gt_ids = rng.choice(ids, size=(12, 20)).astype(np.uint8)
        gt_ids[:, :3] = 7  # plenty of road
        pred_train = np.where(rng.random((12, 20)) < 0.5, id_to_train[gt_ids], rng.integers(0, 17, (12, 20)))
        pred_train = np.where(pred_train == IGNORE_INDEX, 0, pred_train)  # predictions are trainIds 0..18
        pred_ids = np.vectorize(lambda t: trainId2label[int(t)].id)(pred_train).astype(np.uint8)
        gt_file, pred_file = tmp_path / f"gt{i}_labelIds.png", tmp_path / f"pred{i}.png"
        Image.fromarray(gt_ids).save(gt_file)
        Image.fromarray(pred_ids).save(pred_file)
        gt_files.append(str(gt_file))
        pred_files.append(str(pred_file))
        gts.append(id_to_train[gt_ids])
        preds.append(pred_train)

    args = official.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet, args.evalPixelAccuracy = False, False, True, False
    result = official.evaluateImgLists(pred_files, gt_files, args)
    official_miou = official.getScoreAverage(result["classScores"], args)

    m = SegmentationMetric(19, [trainId2label[t].name for t in range(19)])
    m.update(torch.as_tensor(np.stack(preds)), torch.as_tensor(np.stack(gts)))
    out = m.compute()
    assert math.isclose(out["miou"], 100 * official_miou, rel_tol=1e-9)
    for t in range(19):
        ref = result["classScores"][trainId2label[t].name]
        ours = out[f"iou_{trainId2label[t].name}"]
        assert (math.isnan(ref) and math.isnan(ours)) or math.isclose(ours, 100 * ref, rel_tol=1e-9)
    assert id2label[7].trainId == 0


def test_segmentation_streaming_and_reduction():
    labels = torch.randint(0, 5, (2, 6, 8))
    labels[1, :2] = IGNORE_INDEX
    check_streaming_and_reduction(lambda: SegmentationMetric(5), torch.randn(2, 5, 3, 4), labels)


def test_all_reduce_single_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        m = SegmentationMetric(3)
        labels = torch.randint(0, 3, (1, 4, 4))
        m.update(labels, labels)
        before = m.compute()
        m.all_reduce()
        assert m.compute() == before
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- depth


def test_depth_identity_is_perfect():
    gt = torch.rand(2, 1, 5, 6) * 50 + 1
    m = DepthMetric()
    m.update(gt.clone(), gt, gt > 0)
    out = m.compute()
    assert out["abs_rel"] == 0 and out["rmse"] == 0 and out["rmse_log"] == 0 and out["delta1"] == 100


def test_depth_hand_computed_per_pixel_and_per_image():
    gt = torch.tensor([[[[2.0, 4.0]]], [[[10.0, 10.0]]]])
    pred = torch.tensor([[[[1.0, 4.0]]], [[[10.0, 20.0]]]])
    mask = torch.ones_like(gt, dtype=torch.bool)
    pixel = DepthMetric(DepthProtocol(per_image=False))
    pixel.update(pred, gt, mask)
    out = pixel.compute()
    assert math.isclose(out["abs_rel"], (0.5 + 0 + 0 + 1.0) / 4)
    assert math.isclose(out["sq_rel"], (0.5 + 0 + 0 + 10.0) / 4)
    assert math.isclose(out["rmse"], math.sqrt((1 + 0 + 0 + 100) / 4))
    assert math.isclose(out["rmse_log"], math.sqrt(2 * math.log(2) ** 2 / 4))
    assert math.isclose(out["delta1"], 50) and math.isclose(out["delta2"], 50) and math.isclose(out["delta3"], 50)
    image = DepthMetric(DepthProtocol(per_image=True))
    image.update(pred, gt, mask)
    out = image.compute()
    # the official DenseMTL protocol: root of the mean per-image MSE (not the mean of per-image RMSEs, 3.89)
    assert math.isclose(out["rmse"], math.sqrt((0.5 + 50) / 2))
    assert math.isclose(out["rmse_log"], math.sqrt((math.log(2) ** 2 / 2 + math.log(2) ** 2 / 2) / 2))
    assert math.isclose(out["abs_rel"], (0.25 + 0.5) / 2)


def test_depth_caps_mask_and_clamp():
    gt = torch.tensor([[[[0.0, 5.0, 100.0, 10.0]]]])
    mask = torch.tensor([[[[True, True, True, False]]]])
    pred = torch.tensor([[[[3.0, 200.0, 7.0, 1.0]]]])
    m = DepthMetric(DepthProtocol(min_depth=1e-3, max_depth=80.0))
    m.update(pred, gt, mask)
    out = m.compute()
    # only the 5 m pixel is evaluated, its prediction clamped to 80 m
    assert math.isclose(out["rmse"], 75.0) and math.isclose(out["abs_rel"], 15.0)


def test_depth_median_scaling_per_image():
    gt = torch.rand(2, 1, 4, 5) * 30 + 1
    pred = gt * torch.tensor([0.01, 7.0]).reshape(2, 1, 1, 1)
    m = DepthMetric(DepthProtocol(median_scaling=True, per_image=True))
    m.update(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    out = m.compute()
    assert out["abs_rel"] < 1e-6 and out["delta1"] == 100
    assert "median scaling per image" in m.protocol_description()


def test_depth_streaming_and_reduction():
    gt = torch.rand(2, 1, 6, 8) * 90
    pred = torch.rand(2, 1, 3, 4) * 90 + 0.1
    for per_image in (False, True):
        protocol = DepthProtocol(per_image=per_image, median_scaling=per_image)
        check_streaming_and_reduction(lambda: DepthMetric(protocol), pred, gt, gt > 0)


# ---------------------------------------------------------------- normals


def rotation_about_x(degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)


def test_normals_error_of_rotated_field_is_the_angle():
    gt = torch.zeros(2, 3, 6, 7, dtype=torch.float64)
    gt[:, 1] = -1.0  # ground normals, perpendicular to the rotation axis x
    gt[1, :, :3] = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)[:, None, None]
    pred = torch.einsum("ij,bjhw->bihw", rotation_about_x(17.3), gt)
    m = NormalsMetric()
    m.update(pred * 4.0, gt, torch.ones(2, 1, 6, 7, dtype=torch.bool))
    out = m.compute()
    assert math.isclose(out["mean"], 17.3, abs_tol=1e-9)
    assert abs(out["median"] - 17.3) <= 0.005 + 1e-9
    assert out["within_11.25"] == 0 and out["within_22.5"] == 100 and out["within_30"] == 100


def test_normals_identity_mask_and_median():
    angles = [5.0, 40.0, 90.0]
    pred = torch.stack(
        [rotation_about_x(a).float() @ torch.tensor([0.0, 0.0, -1.0]) for a in angles], dim=1
    )[None, :, None, :]
    gt = torch.tensor([0.0, 0.0, -1.0])[None, :, None, None].expand(1, 3, 1, 3).clone()
    gt_masked = torch.cat([gt, torch.full((1, 3, 1, 1), float("nan"))], dim=3)
    pred_masked = torch.cat([pred, torch.ones(1, 3, 1, 1)], dim=3)
    mask = torch.tensor([[[[True, True, True, False]]]])
    m = NormalsMetric()
    m.update(pred_masked, gt_masked, mask)
    out = m.compute()
    assert math.isclose(out["mean"], 45.0, abs_tol=1e-4)
    assert abs(out["median"] - 40.0) <= 0.005 + 1e-4
    assert math.isclose(out["within_11.25"], 100 / 3) and math.isclose(out["within_30"], 100 / 3)
    ident = NormalsMetric()
    ident.update(gt, gt)
    assert ident.compute()["mean"] < 1e-6


def test_normals_zero_prediction_scores_ninety_degrees():
    gt = torch.tensor([0.0, 0.0, 1.0])[None, :, None, None].expand(1, 3, 2, 2).clone()
    pred = gt.clone()
    pred[..., 0, :] = 0.0  # no direction in the top row: not a perfect answer
    m = NormalsMetric()
    m.update(pred, gt)
    out = m.compute()
    assert math.isclose(out["mean"], 45.0) and out["within_30"] == 50


def test_normals_streaming_and_reduction():
    gt = F.normalize(torch.randn(2, 3, 6, 8), dim=1)
    mask = torch.rand(2, 1, 6, 8) > 0.3
    check_streaming_and_reduction(NormalsMetric, torch.randn(2, 3, 6, 8), gt, mask)


# ---------------------------------------------------------------- edges


def test_edges_identity_is_perfect():
    gt = torch.zeros(1, 1, 8, 8)
    gt[..., 3, :] = 1
    m = EdgesMetric(tolerance=0)
    m.update(gt.clone(), gt)
    out = m.compute()
    assert out["f1_edge"] == 100 and out["ods_f"] == 100 and out["mean_f1"] == 100


def test_edges_tolerance_and_hand_computed_counts():
    gt = torch.zeros(1, 1, 8, 8)
    gt[..., 3, 1:7] = 1  # 6 GT edge pixels
    pred = torch.zeros(1, 1, 8, 8)
    pred[..., 4, 1:7] = 0.9  # the same line one row lower
    pred[..., 7, 0] = 0.6  # one isolated false positive
    strict = EdgesMetric(tolerance=0)
    strict.update(pred, gt)
    assert strict.compute()["f1_edge"] == 0
    loose = EdgesMetric(tolerance=1)
    loose.update(pred, gt)
    out = loose.compute()
    precision, recall = 6 / 7, 1.0
    assert math.isclose(out["precision"], 100 * precision) and math.isclose(out["recall"], 100 * recall)
    assert math.isclose(out["f1_edge"], 100 * 2 * precision * recall / (precision + recall))
    # ODS: a threshold above 0.6 drops the false positive
    assert math.isclose(out["ods_f"], 100) and 0.6 < out["ods_threshold"] <= 0.9


def test_edges_mask_and_streaming():
    gt = (torch.rand(2, 1, 10, 12) > 0.8).float()
    mask = torch.rand(2, 1, 10, 12) > 0.2
    pred = torch.rand(2, 1, 5, 6)
    check_streaming_and_reduction(lambda: EdgesMetric(tolerance=1), pred, gt, mask)
    m1, m2 = EdgesMetric(), EdgesMetric()
    full = torch.rand(2, 1, 10, 12)
    m1.update(full, gt, mask)
    changed = torch.where(mask, full, torch.ones_like(full))
    m2.update(changed, gt * mask + (~mask).float(), mask)
    assert m1.compute() == m2.compute()


# ---------------------------------------------------------------- delta and references


def test_delta_zero_for_references_and_signs():
    refs = {"semseg": {"miou": 50.0}, "depth": {"rmse": 4.0}}
    directions = {"semseg": {"miou": True}, "depth": {"rmse": False}}
    assert multitask_delta(refs, refs, directions) == 0
    better = {"semseg": {"miou": 55.0}, "depth": {"rmse": 3.0}}
    assert math.isclose(multitask_delta(better, refs, directions), 100 * (0.1 + 0.25) / 2)
    worse_depth = {"semseg": {"miou": 50.0}, "depth": {"rmse": 5.0}}
    assert multitask_delta(worse_depth, refs, directions) < 0
    with pytest.raises(ValueError, match="reference"):
        multitask_delta(better, {"semseg": refs["semseg"]}, directions)


def test_delta_averages_metrics_within_a_task_first():
    refs = {"depth": {"rmse": 2.0, "delta1": 80.0}, "semseg": {"miou": 10.0}}
    metrics = {"depth": {"rmse": 1.0, "delta1": 80.0}, "semseg": {"miou": 10.0}}
    directions = {"depth": {"rmse": False, "delta1": True}, "semseg": {"miou": True}}
    assert math.isclose(multitask_delta(metrics, refs, directions), 100 * ((0.5 + 0.0) / 2 + 0.0) / 2)


def test_edges_two_class_mean_f1_is_the_official_confusion_matrix_metric():
    gt = torch.zeros(1, 1, 4, 5)
    gt[..., 1, :] = 1  # 5 edge pixels, 15 background
    pred = torch.zeros(1, 1, 4, 5)
    pred[..., 1, :3] = 0.8  # 3 true positives
    pred[..., 3, 0] = 0.7  # 1 false positive; 2 false negatives
    m = EdgesMetric(tolerance=1)
    m.update(pred, gt)
    tp, fp, fn, tn = 3, 1, 2, 14
    f1_edge = 2 * tp / (2 * tp + fp + fn)
    f1_background = 2 * tn / (2 * tn + fn + fp)
    assert math.isclose(m.compute()["mean_f1"], 100 * (f1_edge + f1_background) / 2)


def test_delta_uncertainty_propagates_the_reference_standard_errors():
    refs = {"semseg": {"miou": 50.0}, "depth": {"rmse": 4.0}}
    directions = {"semseg": {"miou": True}, "depth": {"rmse": False}}
    metrics = {"semseg": {"miou": 55.0}, "depth": {"rmse": 3.0}}
    errors = {"semseg": {"miou": 1.0}, "depth": {"rmse": 0.2}}
    expected = math.hypot(100 * 55.0 / (2 * 50.0**2) * 1.0, 100 * 3.0 / (2 * 4.0**2) * 0.2)
    assert math.isclose(delta_uncertainty(metrics, refs, errors, directions), expected)
    eps = 1e-6
    shifted = {"semseg": {"miou": 50.0 + eps}, "depth": {"rmse": 4.0}}
    slope = (multitask_delta(metrics, shifted, directions) - multitask_delta(metrics, refs, directions)) / eps
    assert math.isclose(abs(slope) * 1.0, 100 * 55.0 / (2 * 50.0**2), rel_tol=1e-4)
    assert delta_uncertainty(metrics, refs, {}, directions) == 0
