from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlda.config import load_config
from mtlda.constants import IGNORE_INDEX
from mtlda.data.batch import Batch
from mtlda.errors import UserInputError
from mtlda.losses import berhu_loss
from mtlda.metrics import multitask_delta
from mtlda.references import delta_directions
from mtlda.schema import TasksConfig
from mtlda.tasks import (
    TASKS,
    DepthTask,
    EdgesTask,
    NormalsTask,
    SemsegTask,
    build_tasks,
    check_codes,
    default_weights,
    task_codes,
    task_weights,
)

C = 3
PALETTE = np.array([[128, 64, 128], [70, 70, 70], [0, 0, 142]], dtype=np.uint8)
NAMES = ["road", "building", "car"]
H, W = 6, 8


def make_batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 1, H, W, generator=g) * 40 + 1
    depth[0, 0, 0, :3] = 0.0
    normals = F.normalize(torch.randn(2, 3, H, W, generator=g), dim=1)
    semseg = torch.randint(0, C, (2, H, W), generator=g)
    semseg[1, 2] = IGNORE_INDEX
    edges = (torch.rand(2, 1, H, W, generator=g) > 0.7).float()
    return Batch(
        image=torch.rand(2, 3, H, W, generator=g),
        K=torch.eye(3).expand(2, 3, 3),
        targets={"depth": depth, "normals": normals, "semseg": semseg, "edges": edges},
        masks={
            "depth": depth > 0,
            "normals": torch.rand(2, 1, H, W, generator=g) > 0.2,
            "edges": torch.rand(2, 1, H, W, generator=g) > 0.1,
        },
    )


INFO = SimpleNamespace(num_classes=C, palette=PALETTE, class_names=tuple(NAMES))


def all_tasks(codes=("S", "D", "N", "E"), *overrides):
    cfg = load_config(None, [f"tasks.names=[{', '.join(codes)}]", *overrides])
    return build_tasks(cfg, INFO)


def test_build_tasks_in_sorted_name_order():
    tasks = all_tasks(("S", "N", "E", "D"))
    assert list(tasks) == ["depth", "edges", "normals", "semseg"]
    assert [t.code for t in tasks.values()] == ["D", "E", "N", "S"]
    assert [t.out_channels for t in tasks.values()] == [1, 1, 3, C]
    for task in tasks.values():
        assert task.main_metric in task.higher_is_better
        assert all(metric in task.higher_is_better for metric, _, _ in task.columns)
    with pytest.raises(ValueError, match="palette"):
        build_tasks(load_config(None, ["tasks.names=[S]"]), SimpleNamespace(num_classes=C, palette=PALETTE[:2],
                                                                              class_names=NAMES))


def test_task_codes_come_from_the_registry_and_bad_codes_are_named():
    assert task_codes().items() >= {"D": "depth", "E": "edges", "N": "normals", "S": "semseg"}.items()
    assert "disp" in TASKS and TASKS.get("disp").code == ""
    assert check_codes(["S", "D"]) == ["depth", "semseg"]
    for codes, message in ((["S", "X"], "unknown task code"), ([], "no task given"), (["s"], "upper case: S"),
                           (["S", "S"], "must not repeat")):
        with pytest.raises(UserInputError, match=message):
            check_codes(codes)
    with pytest.raises(UserInputError,
                       match=r"unknown task 'heigth'.*registered: depth, disp, edges, (\w+, )*normals, semseg"):
        TASKS.get("heigth")


def test_default_weights_from_the_paper():
    assert default_weights(["S", "D"]) == {"depth": 1.0, "semseg": 50.0}
    assert default_weights(["N", "D", "S"]) == {"depth": 1.0, "normals": 100.0, "semseg": 100.0}
    assert default_weights(["S", "D", "N", "E"]) == {"depth": 1.0, "edges": 50.0, "normals": 100.0, "semseg": 100.0}
    assert default_weights(["N"]) == {"normals": 1.0}
    assert default_weights(["S", "N"]) == {"normals": 1.0, "semseg": 1.0}


def test_task_weights_override_and_errors():
    assert task_weights(TasksConfig(names=["S", "D"])) == {"depth": 1.0, "semseg": 50.0}
    assert task_weights(TasksConfig(names=["S", "D"], weights={"S": 3.0, "D": 2.0})) == {"depth": 2.0, "semseg": 3.0}
    with pytest.raises(ValueError, match="missing"):
        task_weights(TasksConfig(names=["S", "D"], weights={"S": 3.0}))


def test_depth_encoding_round_trip_is_exact_to_rounding():
    for task in (DepthTask(inv_scale=80.0), DepthTask(inv_scale=655.36, inv_offset=0.01)):
        for dtype in (torch.float32, torch.float64):
            depth = torch.rand(1, 1, 50, 50, dtype=dtype) * 200 + 0.01
            decoded = task.decode(task.encode(depth, depth > 0))
            assert ((decoded - depth).abs() / depth).max() <= 4 * torch.finfo(dtype).eps
        assert task.decode(torch.tensor([[[[-1.0, 0.0]]]])).isfinite().all()


def test_official_depth_encoding_decodes_to_the_metric_depth_it_meant():
    task = DepthTask(inv_scale=655.36, inv_offset=0.01)
    metres = torch.tensor([1.0, 10.0, 80.0], dtype=torch.float64).reshape(1, 1, 1, 3)
    official = 65536 / (100 * metres + 1)  # what the official head regresses
    assert torch.allclose(task.encode(metres, metres > 0), official)
    assert torch.allclose(task.decode(official), metres)  # not 655.36 / y - 1 (the official code's -0.99 m)


def test_depth_loss_is_berhu_on_scaled_inverse_depth_and_upsamples_any_dimension():
    batch = make_batch()
    task = DepthTask(inv_scale=80.0)
    raw = torch.rand(2, 1, H, W // 2) + 0.5  # only the width differs
    loss = task.loss(raw, batch)
    up = F.interpolate(raw, size=(H, W), mode="bilinear", align_corners=False)
    depth, valid = batch.targets["depth"], batch.masks["depth"]
    target = torch.where(valid, 80.0 / depth.clamp_min(1e-9), 0.0)
    assert torch.allclose(loss, berhu_loss(up, target, valid))
    perfect = task.loss(task.encode(depth, valid), batch)
    assert perfect.item() == 0


def test_task_losses_ignore_masked_pixels_and_give_finite_values():
    batch = make_batch()
    tasks = all_tasks()
    g = torch.Generator().manual_seed(1)
    for name, task in tasks.items():
        raw = torch.randn(2, task.out_channels, H, W, generator=g, requires_grad=True)
        loss = task.loss(raw, batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert torch.isfinite(raw.grad).all()
        invalid = ~task.mask(batch)
        changed = torch.where(invalid, torch.randn(raw.shape, generator=g) * 50, raw.detach())
        assert torch.equal(task.loss(changed, batch), task.loss(raw.detach(), batch)), name


def test_semseg_loss_matches_cross_entropy_on_upsampled_logits():
    batch = make_batch()
    task = all_tasks(("S",))["semseg"]
    raw = torch.randn(2, C, H // 2, W // 2)
    up = F.interpolate(raw, size=(H, W), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, batch.targets["semseg"], ignore_index=IGNORE_INDEX)
    assert torch.allclose(task.loss(raw, batch), expected)


def test_decode_outputs():
    tasks = all_tasks()
    raw = torch.randn(2, 3, 4, 5)
    assert torch.allclose(tasks["normals"].decode(raw).norm(dim=1), torch.ones(2, 4, 5))
    assert torch.allclose(tasks["semseg"].decode(raw).sum(1), torch.ones(2, 4, 5))
    assert torch.equal(tasks["edges"].decode(raw[:, :1]), raw[:, :1].sigmoid())
    with pytest.raises(ValueError, match="head output"):
        tasks["depth"].decode(raw)


def test_perfect_predictions_through_decode_give_perfect_metrics():
    batch = make_batch()
    tasks = all_tasks()
    depth_task = tasks["depth"]
    raw = {
        "depth": depth_task.encode(batch.targets["depth"], batch.masks["depth"]),
        "normals": batch.targets["normals"] * 2.0,
        "semseg": F.one_hot(batch.targets["semseg"].clamp(max=C - 1), C).permute(0, 3, 1, 2).float() * 20,
        "edges": (batch.targets["edges"] - 0.5) * 40,
    }
    results = {}
    for name, task in tasks.items():
        metric = task.new_metric()
        task.score(metric, task.decode(raw[name]), batch)
        results[name] = metric.compute()
    assert results["depth"]["rmse"] < 1e-4
    assert results["normals"]["mean"] < 1e-3
    assert results["semseg"]["miou"] == 100
    assert results["edges"]["f1_edge"] == 100 and results["edges"]["mean_f1"] == 100
    directions = delta_directions(tasks)
    assert directions == {
        "depth": {"rmse": False},
        "edges": {"mean_f1": True},
        "normals": {"mean": False},
        "semseg": {"miou": True},
    }
    assert multitask_delta(results, results, directions) == 0


def test_visualisations_are_rgb_in_unit_range():
    batch = make_batch()
    tasks = all_tasks(("S", "D", "N", "E"), "tasks.depth_protocol.max_depth=50")
    for task in tasks.values():
        decoded = task.decode(torch.randn(2, task.out_channels, H, W).abs() + 0.1)
        for image in (task.visualise(decoded), task.visualise_target(batch)):
            assert image.shape == (2, 3, H, W)
            assert image.min() >= 0 and image.max() <= 1
    seg = tasks["semseg"].visualise_target(batch)
    label = batch.targets["semseg"][0, 0, 0].item()
    assert torch.allclose(seg[0, :, 0, 0] * 255, torch.tensor(PALETTE[label], dtype=torch.float32))
    assert (seg[1, :, 2] == 0).all()  # ignored row is black
    depth_vis = tasks["depth"].visualise_target(batch)
    assert (depth_vis[0, :, 0, :3] == 0).all()  # missing depth is black


def test_protocol_descriptions_name_each_task():
    tasks = all_tasks(("S", "D"))
    assert tasks["depth"].protocol_description().startswith("depth:")
    assert tasks["semseg"].protocol_description().startswith("semseg:")


def test_edges_and_normals_tasks_standalone():
    assert EdgesTask(tolerance=2).new_metric().tolerance == 2
    assert NormalsTask().new_metric().protocol_description().startswith("normals:")
    with pytest.raises(ValueError, match="class names"):
        SemsegTask(C, PALETTE, NAMES[:2])
