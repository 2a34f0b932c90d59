"""Patch discriminators and output-level adversarial losses (MTL-UDA)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlda.data.batch import Batch
from mtlda.losses.adversarial import (
    adversarial_generator_loss,
    adversarial_scale_weights,
    discriminator_loss,
    entropy_map,
    frozen,
)
from mtlda.models.discriminator import PatchDiscriminator, build_discriminators, discriminator_key
from mtlda.tasks import DepthTask, EdgesTask, NormalsTask, SemsegTask

pytestmark = pytest.mark.usefixtures("one_thread")


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- entropy map


def test_entropy_of_one_hot_prediction_is_zero():
    logits = torch.full((2, 5, 3, 4), -1e4)
    logits[:, 2] = 1e4
    ent = entropy_map(logits)
    assert ent.shape == logits.shape
    assert torch.equal(ent, torch.zeros_like(ent))


def test_entropy_of_uniform_prediction_is_maximal():
    num_classes = 7
    ent = entropy_map(torch.zeros(2, num_classes, 3, 4))
    torch.testing.assert_close(ent, torch.full_like(ent, 1.0 / num_classes))
    torch.testing.assert_close(ent.sum(1), torch.ones(2, 3, 4))
    random_sum = entropy_map(torch.randn(2, num_classes, 3, 4, generator=torch.Generator().manual_seed(0))).sum(1)
    assert (random_sum < 1.0).all() and (random_sum > 0.0).all()


def test_entropy_matches_direct_formula_and_survives_extreme_logits():
    logits = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(1)) * 3
    p = torch.softmax(logits.double(), dim=1)
    expected = (-p * torch.log(p) / math.log(4)).float()
    torch.testing.assert_close(entropy_map(logits), expected)
    extreme = torch.tensor([3e38, -3e38, 0.0, 1e30]).view(1, 4, 1, 1).expand(2, 4, 3, 3).contiguous()
    extreme.requires_grad_(True)
    ent = entropy_map(extreme)
    ent.sum().backward()
    assert torch.isfinite(ent).all() and torch.isfinite(extreme.grad).all()


def test_entropy_rejects_single_channel():
    with pytest.raises(ValueError, match="C >= 2"):
        entropy_map(torch.zeros(1, 1, 4, 4))


# ---------------------------------------------------------------- discriminator inputs (defined by each task)


def depth_batch(depth: torch.Tensor, mask: torch.Tensor) -> Batch:
    return Batch(image=torch.zeros(1, 3, *depth.shape[-2:]), K=torch.eye(3)[None], targets={"depth": depth},
                 masks={"depth": mask})


def test_source_depth_range_in_inverse_head_units_over_valid_pixels():
    depth = torch.tensor([2.0, 4.0, 8.0, 0.0, 100.0, 0.5]).view(1, 1, 2, 3)
    mask = torch.tensor([True, True, True, True, False, False]).view(1, 1, 2, 3)
    low, high = DepthTask(inv_scale=80.0).discriminator_context(depth_batch(depth, mask))
    assert low.item() == pytest.approx(80.0 / 8.0)
    assert high.item() == pytest.approx(80.0 / 2.0)
    low, high = DepthTask(inv_scale=655.36, inv_offset=0.01).discriminator_context(depth_batch(depth, mask))
    assert low.item() == pytest.approx(655.36 / 8.01) and high.item() == pytest.approx(655.36 / 2.01)


def test_source_depth_range_rejects_empty_or_degenerate_batches():
    depth = torch.full((1, 1, 2, 2), 5.0)
    task = DepthTask(inv_scale=80.0)
    with pytest.raises(ValueError, match="no valid depth"):
        task.discriminator_context(depth_batch(depth, torch.zeros(1, 1, 2, 2, dtype=torch.bool)))
    with pytest.raises(ValueError, match="all equal"):
        task.discriminator_context(depth_batch(depth, torch.ones(1, 1, 2, 2, dtype=torch.bool)))


def test_depth_normalisation_uses_source_statistics_for_both_domains():
    source_gt = torch.tensor([2.0, 4.0, 8.0, 16.0]).view(1, 1, 2, 2)
    task = DepthTask(inv_scale=80.0)
    source_range = task.discriminator_context(depth_batch(source_gt, source_gt > 0))  # y in [5, 40]
    source_pred = torch.tensor([5.0, 40.0, 22.5, 12.0]).view(1, 1, 2, 2)
    target_pred = torch.tensor([1.0, 47.0, 5.0, 75.0]).view(1, 1, 2, 2)  # the target domain sees other depths
    src = task.discriminator_input(source_pred, source_range)
    tgt = task.discriminator_input(target_pred, source_range)
    torch.testing.assert_close(src, (source_pred - 5.0) / 35.0)
    torch.testing.assert_close(tgt, (target_pred - 5.0) / 35.0)
    assert tgt.min() < 0.0 and tgt.max() > 1.0


def test_other_tasks_discriminator_inputs():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 4, 6, generator=gen)
    semseg = SemsegTask(4, torch.zeros(4, 3, dtype=torch.uint8), list("abcd"))
    torch.testing.assert_close(semseg.discriminator_input(logits, None), entropy_map(logits))
    edges = torch.randn(2, 1, 8, 8, generator=gen)
    torch.testing.assert_close(EdgesTask().discriminator_input(edges, None), torch.sigmoid(edges))
    pred = torch.randn(2, 3, 4, 5, generator=gen) * 7
    unit = NormalsTask().discriminator_input(pred, None)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2, 4, 5))
    torch.testing.assert_close(unit * pred.norm(dim=1, keepdim=True), pred)


# ---------------------------------------------------------------- discriminators


@pytest.mark.parametrize("in_channels, expected", [(16, 2_778_049), (8, 2_769_857), (1, 2_762_689)])
def test_discriminator_parameter_counts(in_channels, expected):
    assert param_count(PatchDiscriminator(in_channels)) == expected


def test_spectral_norm_adds_buffers_not_parameters():
    plain = PatchDiscriminator(8, base_channels=8)
    normed = PatchDiscriminator(8, base_channels=8, spectral_norm=True)
    assert param_count(plain) == param_count(normed)
    assert len(list(normed.buffers())) > len(list(plain.buffers())) == 0


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_discriminator_output_is_input_over_32(spectral_norm):
    disc = PatchDiscriminator(3, base_channels=4, spectral_norm=spectral_norm)
    assert disc(torch.rand(2, 3, 64, 96)).shape == (2, 1, 2, 3)
    assert disc(torch.rand(1, 3, 32, 32)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="at least 32x32"):
        disc(torch.rand(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        disc(torch.rand(1, 2, 32, 32))


def test_build_discriminators_sorted_keys_and_channels():
    discs = build_discriminators({"semseg": 5, "depth": 1}, scales=[1, 0], base_channels=4)
    assert list(discs.keys()) == ["depth_s0", "depth_s1", "semseg_s0", "semseg_s1"]
    assert discs[discriminator_key("semseg", 1)].in_channels == 5
    assert discs["depth_s0"].in_channels == 1
    with pytest.raises(ValueError, match="distinct"):
        build_discriminators({"depth": 1}, scales=[0, 0])
    with pytest.raises(ValueError, match="at least one scale"):
        build_discriminators({"depth": 1}, scales=[])


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_discriminator_learns_to_separate_domains(spectral_norm):
    torch.manual_seed(0)
    discs = build_discriminators({"depth": 1}, scales=[0], spectral_norm=spectral_norm, base_channels=8)
    optimiser = torch.optim.Adam(discs.parameters(), lr=1e-3, betas=(0.9, 0.99))
    losses = []
    for _ in range(40):
        source = 0.3 + 0.05 * torch.randn(4, 1, 32, 32)
        target = 0.7 + 0.05 * torch.randn(4, 1, 32, 32)
        loss, _ = discriminator_loss(discs, {("depth", 0): source}, {("depth", 0): target})
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(2 * math.log(2), abs=0.1)
    assert sum(losses[-5:]) / 5 < 0.2


# ---------------------------------------------------------------- gradient flow


def make_generator_and_discriminators(spectral_norm=False):
    torch.manual_seed(0)
    generator = nn.Conv2d(3, 1, kernel_size=3, padding=1)
    discs = build_discriminators({"depth": 1}, scales=[0], spectral_norm=spectral_norm, base_channels=4)
    images = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    return generator, discs, images


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_generator_step_leaves_discriminators_without_gradient(spectral_norm):
    generator, discs, (_, tgt_img) = make_generator_and_discriminators(spectral_norm)
    loss, per_key = adversarial_generator_loss(discs, {("depth", 0): generator(tgt_img)}, lambda_adv=5e-3)
    loss.backward()
    assert all(p.grad is None for p in discs.parameters())
    assert all(p.requires_grad for p in discs.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())
    assert set(per_key) == {("depth", 0)} and not per_key[("depth", 0)].requires_grad


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_discriminator_step_leaves_generator_without_gradient(spectral_norm):
    generator, discs, (src_img, tgt_img) = make_generator_and_discriminators(spectral_norm)
    loss, _ = discriminator_loss(discs, {("depth", 0): generator(src_img)}, {("depth", 0): generator(tgt_img)})
    loss.backward()
    assert all(p.grad is None for p in generator.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in discs.parameters())


def test_generator_gradient_scales_exactly_with_lambda():
    generator, discs, (_, tgt_img) = make_generator_and_discriminators()
    generator, discs, tgt_img = generator.double(), discs.double(), tgt_img.double()  # no float32 cancellation

    def generator_grads(lambda_adv):
        generator.zero_grad()
        loss, _ = adversarial_generator_loss(discs, {("depth", 0): generator(tgt_img)}, lambda_adv)
        loss.backward()
        return [p.grad.clone() for p in generator.parameters()]

    unweighted = generator_grads(1.0)
    weighted = generator_grads(5e-3)
    for g_weighted, g_unweighted in zip(weighted, unweighted):
        assert g_unweighted.abs().sum() > 0
        torch.testing.assert_close(g_weighted, 5e-3 * g_unweighted, rtol=1e-12, atol=0.0)


def test_generator_loss_sums_tasks_and_averages_intermediate_scales():
    torch.manual_seed(0)
    discs = build_discriminators({"semseg": 3, "depth": 1}, scales=[0, 1, 2], base_channels=4)
    inputs = {(task, s): torch.rand(2, ch, 32, 32) for task, ch in [("semseg", 3), ("depth", 1)] for s in range(3)}
    loss, per_key = adversarial_generator_loss(discs, inputs, lambda_adv=0.5)
    with torch.no_grad():
        independent = {k: F.softplus(-discs[discriminator_key(*k)](x)).mean() for k, x in inputs.items()}
    for key in inputs:
        torch.testing.assert_close(per_key[key], independent[key])
    expected = 0.5 * sum(
        independent[(t, 0)] + (independent[(t, 1)] + independent[(t, 2)]) / 2 for t in ("semseg", "depth")
    )
    torch.testing.assert_close(loss.detach(), expected)
    assert adversarial_scale_weights({0, 1}) == {0: 1.0, 1: 1.0}
    assert adversarial_scale_weights({1, 2}) == {1: 0.5, 2: 0.5}


def test_discriminator_loss_matches_eq7_per_discriminator():
    torch.manual_seed(0)
    discs = build_discriminators({"semseg": 3, "depth": 1}, scales=[0], base_channels=4)
    source = {("semseg", 0): torch.rand(2, 3, 32, 32), ("depth", 0): torch.rand(2, 1, 32, 32)}
    target = {("semseg", 0): torch.rand(2, 3, 32, 32), ("depth", 0): torch.rand(2, 1, 32, 32)}
    loss, per_key = discriminator_loss(discs, source, target)
    with torch.no_grad():
        for key in source:
            disc = discs[discriminator_key(*key)]
            expected = F.softplus(-disc(source[key])).mean() + F.softplus(disc(target[key])).mean()
            torch.testing.assert_close(per_key[key], expected)
    torch.testing.assert_close(loss.detach(), sum(per_key.values()))


def test_losses_reject_mismatched_keys():
    discs = build_discriminators({"depth": 1}, scales=[0], base_channels=4)
    x = torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match="no discriminator 'depth_s1'"):
        adversarial_generator_loss(discs, {("depth", 1): x}, 1.0)
    with pytest.raises(ValueError, match="same"):
        discriminator_loss(discs, {("depth", 0): x}, {("depth", 1): x})


def test_frozen_restores_requires_grad_even_on_error():
    module = nn.Linear(2, 2)
    module.bias.requires_grad_(False)
    with pytest.raises(RuntimeError):
        with frozen(module):
            assert not any(p.requires_grad for p in module.parameters())
            raise RuntimeError("inside")
    assert module.weight.requires_grad and not module.bias.requires_grad
