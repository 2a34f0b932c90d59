"""Speed and memory options give today's results: fast normals and normals loss (against frozen copies of the
previous implementations), fused/foreach optimisers, channels_last, and activation checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlda.geometry import _LINE_DIRECTIONS, _NORMAL_BASES, _shifted, backproject, normals_from_depth, unit_vectors
from mtlda.losses import normals_cosine_loss
from mtlda.losses.supervised import _masked_mean
from mtlda.models import HeadSpec, build_network, channels_last_input, to_channels_last
from mtlda.models.decoder import ASPP
from mtlda.scenarios.optim import build_optimizer
from mtlda.schema import ModelConfig, OptimConfig

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 48, 80
K = torch.tensor([[[70.0, 0.0, 37.3], [0.0, 55.0, 22.6], [0.0, 0.0, 1.0]]])


def frozen_normals_from_depth(depth, K, mask=None, discontinuity_threshold=0.05):
    """``normals_from_depth`` before the fast version (F.normalize and torch.linalg.cross), checks left out."""
    h, w = depth.shape[-2:]
    has_depth = torch.isfinite(depth) & (depth > 0)
    if mask is not None:
        has_depth = has_depth & mask.bool()
    clean_depth = torch.where(has_depth, depth, torch.ones_like(depth))
    invalid = F.pad((~has_depth).to(depth.dtype), (1, 1, 1, 1), value=1.0)
    valid = F.max_pool2d(invalid, kernel_size=3, stride=1) == 0
    inv = F.pad(1.0 / clean_depth, (1, 1, 1, 1), mode="replicate")
    centre = _shifted(inv, 0, 0, h, w)
    for dv, du in _LINE_DIRECTIONS:
        bend = (_shifted(inv, dv, du, h, w) + _shifted(inv, -dv, -du, h, w)) / centre - 2
        valid = valid & (bend.abs() <= discontinuity_threshold)
    points = backproject(clean_depth, K)
    padded = F.pad(points, (1, 1, 1, 1), mode="replicate")
    normal_sum = torch.zeros_like(points)
    for (dv1, du1), (dv2, du2) in _NORMAL_BASES:
        first = _shifted(padded, dv1, du1, h, w) - points
        second = _shifted(padded, dv2, du2, h, w) - points
        n = F.normalize(torch.linalg.cross(first, second, dim=1), dim=1)
        facing = torch.where((n * points).sum(dim=1, keepdim=True) > 0, -1.0, 1.0)
        normal_sum = normal_sum + n * facing
    normals = F.normalize(normal_sum, dim=1)
    normals = torch.where(valid, normals, torch.zeros_like(normals))
    return normals, valid


def frozen_normals_cosine_loss(pred, target, mask):
    """``normals_cosine_loss`` before the fast version (both sides through F.normalize), checks left out."""
    clean_pred = torch.where(mask, pred, torch.ones_like(pred))
    clean_target = torch.where(mask, target, torch.ones_like(target))
    cosine = (F.normalize(clean_pred, dim=1) * F.normalize(clean_target, dim=1)).sum(dim=1, keepdim=True)
    return _masked_mean(1 - cosine, mask)


def random_depth(seed: int, batch: int = 2, noise: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random surfaces with per-pixel noise, a depth step, a hole and a sparse random mask."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, 4, 6, generator=g) * 10 + 2
    depth = F.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=False).clamp_min(0.5)
    depth = depth * (1 + noise * torch.randn(batch, 1, H, W, generator=g))
    depth[:, :, 10:20, 30:50] *= 1.3
    depth[:, :, 30:34, 5:25] = 0
    mask = torch.rand(batch, 1, H, W, generator=g) > 0.02
    return depth, mask


def plane_depth(normal: torch.Tensor, offset: float) -> torch.Tensor:
    """(1, 1, H, W) depth of the camera-facing plane n . P = -offset; 0 where the ray misses it."""
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    k = K[0]
    rays = torch.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], torch.ones_like(u)])
    denom = torch.einsum("c,chw->hw", normal / normal.norm(), rays)
    return torch.where(denom < -1e-6, -offset / denom, torch.zeros_like(denom))[None, None]


# ------------------------------------------------------------------------------------------------------- geometry
def test_unit_vectors_match_normalize_in_value_and_gradient():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    x[0, :, 1, 1] = 0  # a zero vector stays zero with a finite gradient
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    weight = torch.randn_like(x)
    (unit_vectors(x1, dim=1) * weight).sum().backward()
    (F.normalize(x2, dim=1) * weight).sum().backward()
    torch.testing.assert_close(unit_vectors(x, dim=1), F.normalize(x, dim=1), rtol=0, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-12)
    assert torch.isfinite(x1.grad).all()
    torch.testing.assert_close(unit_vectors(x, dim=-1), F.normalize(x, dim=-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed, noise", [(0, 0.0), (1, 0.005), (2, 0.01), (3, 0.02)])
def test_normals_from_depth_equals_the_frozen_implementation_on_random_depth(seed, noise):
    depth, mask = random_depth(seed, noise=noise)
    Kb = K.expand(2, 3, 3)
    for m in (None, mask):
        expected, expected_valid = frozen_normals_from_depth(depth, Kb, m)
        normals, valid = normals_from_depth(depth, Kb, m)
        assert torch.equal(valid, expected_valid) and valid.any()
        assert (normals - expected).abs().max() <= 1e-6
        assert normals.shape == expected.shape == (2, 3, H, W)


@pytest.mark.parametrize("normal", [(0.0, 0.0, -1.0), (0.0, -1.0, 0.0), (0.35, -0.25, -0.9), (-0.6, 0.1, -0.5)])
def test_normals_from_depth_equals_the_frozen_implementation_on_planes(normal):
    depth = plane_depth(torch.tensor(normal), offset=1.5)
    expected, expected_valid = frozen_normals_from_depth(depth, K)
    normals, valid = normals_from_depth(depth, K)
    assert torch.equal(valid, expected_valid) and valid.sum() > 0.3 * H * W
    assert (normals - expected).abs().max() <= 1e-6


# --------------------------------------------------------------------------------------------------------- losses
def test_normals_loss_equals_the_frozen_implementation_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 16, 24, generator=g) * 3
    pred[0, :, 2, 3] = 0
    target = F.normalize(torch.randn(2, 3, 16, 24, generator=g), dim=1)
    mask = torch.rand(2, 1, 16, 24, generator=g) > 0.3
    target = torch.where(mask, target, torch.full_like(target, float("nan")))
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    loss, expected = normals_cosine_loss(p1, target, mask), frozen_normals_cosine_loss(p2, target, mask)
    loss.backward()
    expected.backward()
    assert (loss - expected).abs() <= 1e-6
    assert (p1.grad - p2.grad).abs().max() <= 1e-6


# ------------------------------------------------------------------------------------------------------ optimiser
def _grouped_params(seed: int) -> dict[str, list[nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"backbone": [(8, 3, 3, 3), (8,)], "decoders": [(4, 8, 1, 1), (4,), (5, 7)]}
    return {name: [nn.Parameter(torch.randn(s, generator=g)) for s in group] for name, group in shapes.items()}


@pytest.mark.parametrize(
    "settings",
    [
        OptimConfig(name="adam", lr={"backbone": 1e-3, "decoders": 3e-3}, betas=[0.9, 0.98]),
        OptimConfig(name="adam", lr={"backbone": 1e-3, "decoders": 3e-3}, weight_decay=1e-2),
        OptimConfig(name="sgd", lr={"backbone": 1e-2, "decoders": 3e-2}, momentum=0.9, weight_decay=5e-4),
    ],
)
def test_optimizer_updates_equal_the_per_parameter_loop(settings):
    fast_groups, loop_groups = _grouped_params(0), _grouped_params(0)
    fast = build_optimizer(fast_groups, settings)
    assert fast.defaults["fused"] is True
    assert [group["name"] for group in fast.param_groups] == ["backbone", "decoders"]
    loop_settings = [{"params": ps, "lr": settings.lr[name], "name": name} for name, ps in loop_groups.items()]
    if settings.name == "adam":
        loop = torch.optim.Adam(loop_settings, betas=tuple(settings.betas), weight_decay=settings.weight_decay,
                                foreach=False)
    else:
        loop = torch.optim.SGD(loop_settings, momentum=settings.momentum, weight_decay=settings.weight_decay,
                               foreach=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p_fast, p_loop in zip(
            [p for ps in fast_groups.values() for p in ps], [p for ps in loop_groups.values() for p in ps]
        ):
            p_fast.grad = torch.randn(p_fast.shape, generator=g)
            p_loop.grad = p_fast.grad.clone()
        fast.step()
        loop.step()
    for name in fast_groups:
        for p_fast, p_loop in zip(fast_groups[name], loop_groups[name]):
            assert (p_fast - p_loop).abs().max() <= 1e-6


def test_optimizer_falls_back_to_foreach_without_fused_kernels():
    param = nn.Parameter(torch.zeros(3, device="meta"))
    opt = build_optimizer({"decoders": [param]}, OptimConfig(lr={"decoders": 1e-3}))
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]


# -------------------------------------------------------------------------------------------- network variants
HEADS = {"depth": HeadSpec(1, (0, 1)), "normals": HeadSpec(3, (0, 1)), "semseg": HeadSpec(5, (0, 1))}


def _network(checkpointing: str = "none", **overrides) -> nn.Module:
    torch.manual_seed(0)
    settings = {"decoder_channels": [8, 16, 16, 32, 32], "block": "mteb", "stages": [1], **overrides}
    scales = (0, 4) if settings.get("architecture") == "padnet" else (0, 1)
    heads = {task: HeadSpec(spec.out_channels, scales) for task, spec in HEADS.items()}
    return build_network(ModelConfig(**settings), heads, checkpointing=checkpointing).train()


def _train_step(model: nn.Module, image: torch.Tensor, seed: int = 5) -> torch.Tensor:
    """One training-mode forward and backward with the RNG (dropout) seeded; returns the loss."""
    torch.manual_seed(seed)
    predictions = model(image)
    loss = sum((out.float() * (i + 1)).square().mean() for i, out in enumerate(predictions.values()))
    loss.backward()
    return loss


def _image(height: int = 64, width: int = 128) -> torch.Tensor:
    return torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))


def _assert_same_state(model: nn.Module, reference: nn.Module, tol: float) -> None:
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=tol, msg=f"gradient of {name}")
    for (name, b), (_, c) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, c, rtol=tol, atol=tol, msg=f"buffer {name}")


@pytest.mark.parametrize("attention", ["spatial", "both"])
def test_channels_last_gives_the_default_format_outputs_and_gradients(attention):
    reference, model = _network(attention=attention), to_channels_last(_network(attention=attention))
    assert model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    aspp = [m for m in model.modules() if isinstance(m, ASPP)]
    assert aspp and all(p.is_contiguous() for m in aspp for p in m.parameters())  # CPU: default format (see ASPP)
    for net in (reference, model):  # let the correlation branch contribute
        for xtam in net.exchange["1"].pairs.values():
            nn.init.constant_(xtam.alpha, 0.5)
    image = _image()
    torch.manual_seed(5)
    expected = reference(image)
    torch.manual_seed(5)
    outputs = model(channels_last_input(image))
    for key, value in expected.items():
        assert outputs[key].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(outputs[key], value, rtol=1e-5, atol=1e-5)
    # Gradients in float64: in float32 the two formats' different summation orders are amplified up to 1e-2
    # (relative) in some exchange-block gradients of this tiny random network (BatchNorm over 2 images), while in
    # float64 they agree to 1e-13, which shows that only rounding differs.
    reference = _network(attention=attention).double()
    model = to_channels_last(_network(attention=attention).double())
    for net in (reference, model):
        for xtam in net.exchange["1"].pairs.values():
            nn.init.constant_(xtam.alpha, 0.5)
    loss = _train_step(model, channels_last_input(image.double()))
    assert loss == _train_step(reference, image.double())
    _assert_same_state(model, reference, 1e-10)


def test_the_aspp_runs_in_the_default_format_on_the_cpu_and_returns_channels_last():
    torch.manual_seed(0)
    reference = ASPP(16, 8, (1, 2)).train()
    model = to_channels_last(nn.Sequential(copy.deepcopy(reference)))[0]
    assert all(p.is_contiguous() for p in model.parameters())
    x = torch.randn(2, 16, 6, 10)
    seen = []
    model.branches[1].register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous()))
    torch.manual_seed(1)
    out = model(channels_last_input(x))
    torch.manual_seed(1)
    expected = reference(x)
    assert seen == [True] and out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "mode, overrides",
    [("encoder", {}), ("all", {}), ("all", {"block": "padnet"}), ("all", {"architecture": "padnet"})],
)
def test_checkpointing_keeps_loss_gradients_and_batchnorm_buffers(mode, overrides):
    image = _image()
    reference, model = _network(**overrides), _network(mode, **overrides)
    expected = _train_step(reference, image)
    rng_after = torch.get_rng_state()
    segments = [model.encoder.layer1[0]]
    if mode == "all":
        block = next(iter(model.exchange.values()))
        segments += [model.decoders["depth"].blocks["0"], *block.pairs.values(), *getattr(block, "fuse", {}).values()]
    calls = {index: 0 for index in range(len(segments))}
    for index, segment in enumerate(segments):
        segment.register_forward_pre_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    loss = _train_step(model, image)
    assert set(calls.values()) == {2}  # forward and recomputation
    assert torch.equal(torch.get_rng_state(), rng_after)
    assert (loss - expected).abs() <= 1e-6
    _assert_same_state(model, reference, 1e-6)
    counts = {b.item() for name, b in model.named_buffers() if name.endswith("num_batches_tracked")}
    assert counts == {1}


def test_checkpointing_recomputes_a_block_without_checkpoint_parts_whole():
    import toy_extensions  # noqa: F401  (registers the "gate" block, which does not declare checkpoint_parts)

    image = _image()
    reference, model = _network(block="gate"), _network("all", block="gate")
    block = model.exchange["1"]
    assert not hasattr(block, "checkpoint_parts") and model.checkpointed_whole == {"1"}
    calls = []
    block.register_forward_pre_hook(lambda *_: calls.append(1))
    expected = _train_step(reference, image)
    assert (_train_step(model, image) - expected).abs() <= 1e-6 and len(calls) == 2
    _assert_same_state(model, reference, 1e-6)


def test_checkpointing_recomputes_and_draws_the_same_dropout_mask():
    model = _network("all")
    aspp = model.decoders["semseg"].blocks["4"].reduce
    dropout = aspp.project[1]
    masks = []
    dropout.register_forward_hook(lambda module, args, out: masks.append((out == 0) & (args[0] != 0)))
    _train_step(model, _image())
    assert len(masks) == 2 and masks[0].any()
    assert torch.equal(masks[0], masks[1])


def test_checkpointing_updates_cumulative_batchnorm_statistics_once():
    image = _image()
    reference, model = _network(), _network("all")
    for net in (reference, model):
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None
    for _ in range(2):
        _train_step(reference, image)
        _train_step(model, image)
    _assert_same_state(model, reference, 1e-6)


def test_checkpointing_is_skipped_without_gradients_and_rejects_unknown_modes():
    model = _network("all").eval()
    with torch.no_grad():
        outputs = model(_image())
    assert set(outputs) == {(task, s) for task in HEADS for s in (0, 1)}
    with pytest.raises(ValueError, match="model.checkpointing: 'layers' is unknown"):
        build_network(ModelConfig(), HEADS, checkpointing="layers")
