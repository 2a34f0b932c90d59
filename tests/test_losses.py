import math

import pytest
import torch
import torch.nn.functional as F

from mtlda.constants import IGNORE_INDEX
from mtlda.losses import (
    berhu_loss,
    cross_entropy_loss,
    multiscale_objective,
    normals_cosine_loss,
    weighted_edge_bce,
)
from mtlda.resize import resize_to

torch.manual_seed(0)


def random_mask(shape=(2, 1, 5, 6), p=0.6) -> torch.Tensor:
    return torch.rand(shape) < p


def test_cross_entropy_ignores_ignored_pixels_exactly():
    logits = torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    labels[0, :2] = IGNORE_INDEX
    base = cross_entropy_loss(logits, labels)
    changed = logits.clone()
    changed[0, :, :2] = torch.randn(4, 2, 6) * 100
    assert torch.equal(cross_entropy_loss(changed, labels), base)
    valid = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], labels[valid])
    assert torch.allclose(base, expected)


def test_cross_entropy_all_ignored_is_zero_with_graph():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = cross_entropy_loss(logits, torch.full((1, 4, 4), IGNORE_INDEX))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_berhu_is_l1_below_c_and_quadratic_above():
    target = torch.zeros(1, 1, 1, 4)
    pred = torch.tensor([[[[0.1, -0.2, 1.0, 0.5]]]])
    mask = torch.ones_like(pred, dtype=torch.bool)
    c = 0.2 * 1.0
    expected = [0.1, 0.2, (1.0 + c**2) / (2 * c), (0.25 + c**2) / (2 * c)]
    assert torch.allclose(berhu_loss(pred, target, mask), torch.tensor(sum(expected) / 4))


def test_berhu_threshold_and_mean_use_valid_pixels_only():
    target = torch.zeros(1, 1, 1, 4)
    pred = torch.tensor([[[[0.1, 0.3, 1.0, 50.0]]]])
    mask = torch.tensor([[[[True, True, True, False]]]])
    c = 0.2 * 1.0
    expected = (0.1 + (0.09 + c**2) / (2 * c) + (1.0 + c**2) / (2 * c)) / 3
    assert math.isclose(berhu_loss(pred, target, mask).item(), expected, rel_tol=1e-6)
    pred2, target2 = pred.clone(), target.clone()
    pred2[..., 3], target2[..., 3] = -7.0, float("inf")
    assert torch.equal(berhu_loss(pred2, target2, mask), berhu_loss(pred, target, mask))


def test_berhu_threshold_is_detached():
    pred = torch.tensor([[[[0.0, 2.0]]]], requires_grad=True)
    loss = berhu_loss(pred, torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2, dtype=torch.bool))
    loss.backward()
    # d/dp of (p^2 + c^2) / (2c) with c fixed at 0.4 is p / c = 5; mean over 2 pixels -> 2.5.
    assert torch.allclose(pred.grad, torch.tensor([[[[0.0, 2.5]]]]))


def test_berhu_empty_and_perfect_give_zero_without_nan():
    pred = torch.randn(1, 1, 3, 3, requires_grad=True)
    loss = berhu_loss(pred, torch.randn(1, 1, 3, 3), torch.zeros(1, 1, 3, 3, dtype=torch.bool))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    same = torch.randn(1, 1, 3, 3, requires_grad=True)
    perfect = berhu_loss(same, same.detach().clone(), torch.ones(1, 1, 3, 3, dtype=torch.bool))
    perfect.backward()
    assert perfect.item() == 0 and torch.isfinite(same.grad).all()


def test_normals_loss_matches_cosine_and_ignores_masked():
    pred = torch.randn(2, 3, 5, 6)
    target = F.normalize(torch.randn(2, 3, 5, 6), dim=1)
    mask = random_mask()
    loss = normals_cosine_loss(pred * 3.0, target, mask)
    cos = F.cosine_similarity(pred, target, dim=1)[mask[:, 0]]
    assert torch.allclose(loss, (1 - cos).mean(), atol=1e-6)
    pred2, target2 = pred.clone(), target.clone()
    pred2[~mask.expand_as(pred)] = 0.0
    target2[~mask.expand_as(target)] = float("nan")
    assert torch.equal(normals_cosine_loss(pred2 * 3.0, target2, mask), loss)
    assert normals_cosine_loss(target, target, mask).abs() < 1e-6
    empty = normals_cosine_loss(pred.requires_grad_(), target, torch.zeros_like(mask))
    assert empty.item() == 0 and empty.requires_grad


def test_edge_bce_weights_and_normalisation():
    logits = torch.tensor([[[[0.0, 2.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    mask = torch.ones_like(target, dtype=torch.bool)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")[0, 0, 0]
    expected = (0.95 * bce[0] + 0.05 * bce[1] + 0.05 * bce[2]) / (0.95 + 0.05 + 0.05)
    assert torch.allclose(weighted_edge_bce(logits, target, mask), expected)


def test_edge_bce_ignores_masked_and_empty_is_zero():
    logits = torch.randn(2, 1, 5, 6)
    target = (torch.rand(2, 1, 5, 6) > 0.7).float()
    mask = random_mask()
    base = weighted_edge_bce(logits, target, mask)
    logits2, target2 = logits.clone(), target.clone()
    logits2[~mask] = 1e4
    target2[~mask] = 1.0 - target2[~mask]
    assert torch.equal(weighted_edge_bce(logits2, target2, mask), base)
    empty = weighted_edge_bce(logits.requires_grad_(), target, torch.zeros_like(mask))
    assert empty.item() == 0 and empty.requires_grad and not torch.isnan(empty)


def test_resize_to_resizes_when_any_dimension_differs():
    x = torch.randn(1, 2, 4, 6)
    assert resize_to(x, (4, 6)) is x
    assert resize_to(x, (4, 12)).shape == (1, 2, 4, 12)
    assert torch.allclose(resize_to(x, (8, 12)), F.interpolate(x, size=(8, 12), mode="bilinear", align_corners=False))


def test_multiscale_objective_follows_eq6():
    losses = {
        ("semseg", 0): torch.tensor(2.0),
        ("semseg", 1): torch.tensor(4.0),
        ("depth", 0): torch.tensor(1.0),
        ("depth", 1): torch.tensor(3.0),
        ("depth", 2): torch.tensor(5.0),
        ("normals", 0): torch.tensor(0.5),
    }
    weights = {"semseg": 50.0, "depth": 1.0, "normals": 100.0}
    total, per_task = multiscale_objective(losses, weights)
    assert list(per_task) == ["depth", "normals", "semseg"]
    assert per_task["semseg"].item() == 50 * (2 + 4)
    assert per_task["depth"].item() == 1 * (1 + (3 + 5) / 2)
    assert per_task["normals"].item() == 100 * 0.5
    assert total.item() == 300 + 5 + 50
    semseg_only = {k: v for k, v in losses.items() if k[0] == "semseg"}
    total_final1, _ = multiscale_objective(semseg_only, weights, final_scale=1)
    assert total_final1.item() == 50 * (4 + 2)


def test_multiscale_objective_errors():
    with pytest.raises(ValueError, match="weight"):
        multiscale_objective({("semseg", 0): torch.tensor(1.0)}, {})
    with pytest.raises(ValueError, match="final scale"):
        multiscale_objective({("semseg", 1): torch.tensor(1.0)}, {"semseg": 1.0})
