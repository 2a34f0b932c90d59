"""Exchange blocks: xTAM branches and alpha, SDPA equality and memory, mTEB task-order invariance, parameter parity."""

from __future__ import annotations

import pytest
import torch

from mtlda.models.exchange import (
    MTEB,
    XTAM,
    GatedBlock,
    PadNetBlock,
    attention,
    attention_downscale,
    explicit_attention,
)

pytestmark = pytest.mark.usefixtures("one_thread")

def _features(channels: int = 16, height: int = 8, width: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(seed))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for backward while running ``fn``."""
    saved: dict[tuple[int, int, torch.dtype], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[(tensor.data_ptr(), tensor.numel(), tensor.dtype)] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(saved.values())


def test_attention_downscale_matches_official_stage_factors() -> None:
    assert [attention_downscale(2**stage) for stage in (4, 3, 2, 1, 0)] == [1, 1, 2, 4, 8]


def test_xtam_with_zero_alpha_ignores_the_attention_branch() -> None:
    torch.manual_seed(0)
    xtam = XTAM(16, downscale=2).eval()
    target, source = _features(seed=1), _features(seed=2)
    with torch.no_grad():
        out = xtam(target, source)
        assert torch.equal(out, xtam(_features(seed=3), source)), "the target only enters through the query"
        extracted = xtam.extract(source)
        attention_removed = torch.cat([xtam.self_attention(extracted), torch.zeros_like(target)], dim=1)
        torch.testing.assert_close(out, xtam.out_proj(attention_removed), rtol=0, atol=1e-6)
        xtam.alpha.fill_(0.5)
        assert not torch.allclose(xtam(target, source), out, atol=1e-4), "nonzero alpha must change the output"


@pytest.mark.parametrize("kind", ["spatial", "channel", "both"])
def test_xtam_sdpa_equals_explicit_softmax(kind: str) -> None:
    torch.manual_seed(0)
    xtam = XTAM(16, downscale=2, attention=kind).eval()
    with torch.no_grad():
        xtam.alpha.normal_()
        target, source = _features(seed=1), _features(seed=2)
        fused = xtam(target, source)
        xtam.use_sdpa = False
        explicit = xtam(target, source)
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-5)


def test_attention_matches_an_independent_softmax() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 12, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    weights = torch.exp(torch.einsum("bqd,bkd->bqk", q, k) / 8**0.5)
    reference = torch.einsum("bqk,bkd->bqd", weights / weights.sum(-1, keepdim=True), v)
    torch.testing.assert_close(explicit_attention(q, k, v), reference)
    torch.testing.assert_close(attention(q, k, v), reference)


@pytest.mark.parametrize("kind", ["spatial", "both"])
def test_xtam_gradients_reach_every_parameter(kind: str) -> None:
    torch.manual_seed(0)
    xtam = XTAM(16, downscale=2, attention=kind)
    with torch.no_grad():
        xtam.alpha.normal_()
    xtam(_features(seed=1), _features(seed=2)).square().sum().backward()
    for name, parameter in xtam.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_xtam_rejects_features_not_divisible_by_downscale() -> None:
    xtam = XTAM(16, downscale=4)
    with pytest.raises(ValueError, match="6x16 is not divisible by its downscale 4"):
        xtam(_features(height=6), _features(height=6))


def test_mteb_output_does_not_depend_on_task_listing_order() -> None:
    torch.manual_seed(0)
    listed = MTEB(["semseg", "depth", "normals"], 16, downscale=2).eval()
    torch.manual_seed(1)
    reordered = MTEB(["normals", "semseg", "depth"], 16, downscale=2).eval()
    with torch.no_grad():
        for pair in listed.pairs.values():
            pair.alpha.normal_()
    reordered.load_state_dict(listed.state_dict())
    features = {task: _features(seed=seed) for seed, task in enumerate(["semseg", "depth", "normals"])}
    shuffled = {task: features[task] for task in ["normals", "depth", "semseg"]}
    with torch.no_grad():
        first, second = listed(features), reordered(shuffled)
    assert list(listed.pairs) == list(reordered.pairs)
    for task in features:
        assert torch.equal(first[task], second[task]), task


def test_mteb_concatenates_sources_in_sorted_order() -> None:
    torch.manual_seed(0)
    block = MTEB(["semseg", "normals", "depth"], 16, downscale=2).eval()
    features = {task: _features(seed=seed) for seed, task in enumerate(["semseg", "depth", "normals"])}
    with torch.no_grad():
        block.fuse["semseg"][0].weight[:, 16:] = 0  # second block of fuse inputs: normals -> semseg if sorted
        changed = dict(features, normals=_features(seed=9))
        assert torch.equal(block(features)["semseg"], block(changed)["semseg"])
        assert not torch.equal(block(features)["depth"], block(changed)["depth"])


@pytest.mark.parametrize("fusion", ["add", "prod", "concat"])
def test_mteb_fusions_keep_shapes(fusion: str) -> None:
    block = MTEB(["semseg", "depth"], 16, downscale=1, fusion=fusion)
    out = block({"semseg": _features(), "depth": _features(seed=1)})
    assert {task: tuple(t.shape) for task, t in out.items()} == {"semseg": (2, 16, 8, 16), "depth": (2, 16, 8, 16)}


def test_mteb_rejects_mismatched_task_features() -> None:
    block = MTEB(["semseg", "depth"], 16, downscale=1)
    with pytest.raises(ValueError, match="got features of"):
        block({"semseg": _features(), "normals": _features()})


def test_padnet_block_adds_gated_messages_from_the_other_tasks() -> None:
    torch.manual_seed(0)
    block = PadNetBlock(["semseg", "depth", "normals"], 16)
    features = {task: _features(seed=seed) for seed, task in enumerate(["semseg", "depth", "normals"])}
    with torch.no_grad():
        out = block(features)
        gate = block.pairs["depth_to_semseg"]
        message = gate.feature_conv(features["depth"]) * torch.sigmoid(gate.mask_conv(features["depth"]))
        expected = features["semseg"] + message + block.pairs["normals_to_semseg"](features["normals"])
    torch.testing.assert_close(out["semseg"], expected)


@pytest.mark.parametrize("block", ["mteb", "padnet"])
def test_a_gated_block_starts_as_the_identity_and_learns_its_gate(block: str) -> None:
    torch.manual_seed(0)
    inner = MTEB(["depth", "semseg"], 16, downscale=2) if block == "mteb" else PadNetBlock(["depth", "semseg"], 16)
    gated = GatedBlock(inner, 16).eval()
    features = {"depth": _features(seed=1), "semseg": _features(seed=2)}
    out = gated(features)
    for task in features:
        assert torch.equal(out[task], features[task])
    sum(v.square().sum() for v in out.values()).backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gated.gate.values())
    with torch.no_grad():
        for g in gated.gate.values():
            g.fill_(1.0)
        full, plain = gated(features), inner(features)
    for task in features:
        torch.testing.assert_close(full[task], plain[task])


def test_block_gate_wraps_every_exchange_block_of_the_network() -> None:
    from mtlda.models.decoder import HeadSpec
    from mtlda.models.network import build_network
    from mtlda.schema import ModelConfig

    heads = {"semseg": HeadSpec(9, (0,)), "depth": HeadSpec(1, (0,))}
    plain = build_network(ModelConfig(decoder_channels=[16, 16, 32, 64, 64]), heads)
    gated = build_network(ModelConfig(decoder_channels=[16, 16, 32, 64, 64], block_gate=True), heads)
    assert all(isinstance(b, GatedBlock) for b in gated.exchange.values())
    assert not any(isinstance(b, GatedBlock) for b in plain.exchange.values())
    names = {n for n, _ in gated.named_parameters() if ".gate." in n}
    assert names == {"exchange.1.gate.depth", "exchange.1.gate.semseg"}
    assert {id(p) for p in gated.param_groups()["exchange"]} >= {id(p) for n, p in gated.named_parameters()
                                                                 if n in names}


def test_exchange_parameter_counts_match_the_official_model() -> None:
    with torch.device("meta"):
        assert _count(MTEB(["semseg", "depth"], 128, downscale=4)) == 773_120
        assert _count(MTEB(["semseg", "depth", "normals"], 128, downscale=4)) == 2_318_592
        assert _count(MTEB(["semseg", "depth", "normals"], 256, downscale=1)) == 9_257_472
        assert _count(MTEB(["semseg", "depth", "normals", "edges"], 128, downscale=4)) == 4_636_672
        assert _count(MTEB(["semseg", "depth"], 128, downscale=4, fusion="concat")) == 773_120 + 2 * 128 * 128
        assert _count(XTAM(128, downscale=4)) == 369_920
        assert _count(PadNetBlock(["semseg", "depth"], 128)) == 589_824
        assert _count(PadNetBlock(["semseg", "depth", "normals"], 256)) == 7_077_888


def _skip_without_fused_attention() -> None:
    from torch.nn.attention import SDPBackend

    probe = torch.randn(2, 1, 512, 16, requires_grad=True)
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is not None and choose(probe, probe, probe) == int(SDPBackend.MATH):
        pytest.skip("scaled_dot_product_attention uses the math kernel here: it materialises the attention matrix")


def _attention_saved_bytes(tokens: int, use_sdpa: bool) -> int:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, tokens, 16, generator=generator).requires_grad_() for _ in range(3))
    return _saved_bytes(lambda: attention(q, k, v, use_sdpa=use_sdpa))


def test_sdpa_saved_memory_grows_linearly_with_tokens() -> None:
    _skip_without_fused_attention()
    sdpa_ratio = _attention_saved_bytes(2048, True) / _attention_saved_bytes(512, True)
    explicit_ratio = _attention_saved_bytes(2048, False) / _attention_saved_bytes(512, False)
    assert sdpa_ratio < 8, f"SDPA saved {sdpa_ratio:.1f}x more for 4x tokens: not linear"
    assert explicit_ratio > 12, f"explicit attention saved only {explicit_ratio:.1f}x more for 4x tokens"


def test_xtam_reaches_the_fused_kernel_with_its_token_layout() -> None:
    """Whole-module check: transposed (non-contiguous) tokens would silently select the quadratic math kernel."""
    _skip_without_fused_attention()
    torch.manual_seed(0)
    xtam = XTAM(16, downscale=1)
    saved = {}
    for use_sdpa in (True, False):
        xtam.use_sdpa = use_sdpa
        for height in (16, 32):
            target = _features(height=height, width=2 * height, seed=1)
            source = _features(height=height, width=2 * height, seed=2)
            saved[use_sdpa, height] = _saved_bytes(lambda: xtam(target, source))
    sdpa_ratio = saved[True, 32] / saved[True, 16]
    explicit_ratio = saved[False, 32] / saved[False, 16]
    assert sdpa_ratio < 8, f"xTAM with SDPA saved {sdpa_ratio:.1f}x more for 4x tokens: not linear"
    assert explicit_ratio > 8, f"explicit xTAM saved only {explicit_ratio:.1f}x more for 4x tokens"
