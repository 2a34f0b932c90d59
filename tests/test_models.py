"""Encoder, decoder and network: shapes per scale, block ranges, input-size checks, weights loading, parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18, resnet34

from mtlda.errors import UserInputError
from mtlda.models import HeadSpec, ResNetEncoder, TaskDecoder, build_network, format_parameter_counts
from mtlda.schema import ModelConfig

ALL_SCALES = (0, 1, 2, 3, 4)
HEADS = {
    "semseg": HeadSpec(5, ALL_SCALES),
    "depth": HeadSpec(1, ALL_SCALES),
    "normals": HeadSpec(3, ALL_SCALES),
    "edges": HeadSpec(1, ALL_SCALES),
}
TASK_SETS = [["semseg", "depth"], ["semseg", "depth", "normals"], ["semseg", "depth", "normals", "edges"]]



pytestmark = pytest.mark.usefixtures("one_thread")

def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _small_config(**overrides) -> ModelConfig:
    return ModelConfig(decoder_channels=[8, 16, 16, 32, 32], **overrides)


def _image(height: int = 64, width: int = 128) -> torch.Tensor:
    return torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))


def _assert_shapes(predictions: dict, tasks: list[str], height: int = 64, width: int = 128) -> None:
    expected = {
        (task, s): (2, HEADS[task].out_channels, height // 2**s, width // 2**s) for task in tasks for s in ALL_SCALES
    }
    assert {key: tuple(value.shape) for key, value in predictions.items()} == expected


def test_single_task_network_has_no_exchange_block() -> None:
    net = build_network(_small_config(), {"semseg": HEADS["semseg"]})
    assert len(net.exchange) == 0 and net.tasks == ("semseg",)
    with torch.no_grad():
        _assert_shapes(net(_image()), ["semseg"])


@pytest.mark.parametrize("block", ["mteb", "padnet", "none"])
@pytest.mark.parametrize("tasks", TASK_SETS, ids=["SD", "SDN", "SDNE"])
def test_network_outputs_every_scale(block: str, tasks: list[str]) -> None:
    net = build_network(_small_config(block=block), {task: HEADS[task] for task in reversed(tasks)})
    assert net.tasks == tuple(sorted(tasks))
    assert list(net.exchange) == ([] if block == "none" else ["1"])
    with torch.no_grad():
        _assert_shapes(net(_image()), tasks)


def test_network_runs_exchange_blocks_at_several_stages() -> None:
    net = build_network(_small_config(stages=[1, 3]), {t: HEADS[t] for t in ("semseg", "depth")})
    assert list(net.exchange) == ["3", "1"]
    assert net.exchange["1"].downscale == 4 and net.exchange["3"].downscale == 1
    with torch.no_grad():
        _assert_shapes(net(_image()), ["semseg", "depth"])


def test_an_exchange_block_below_every_output_is_refused() -> None:
    """A block at or below the lowest output scale feeds nothing (its parameters would never get a gradient)."""
    heads = {t: HeadSpec(2, (0, 1)) for t in ("semseg", "depth")}
    with pytest.raises(UserInputError, match="stage 0 feeds no output"):
        build_network(_small_config(stages=[0]), heads)
    coarse = {t: HeadSpec(2, (2, 3)) for t in ("semseg", "depth")}
    with pytest.raises(UserInputError, match=r"stage 2 feeds no output.*\(3\.\.4"):
        build_network(_small_config(stages=[3, 2]), coarse)
    build_network(_small_config(stages=[0], block="none"), heads)
    build_network(_small_config(stages=[0]), {"semseg": heads["semseg"]})


def test_side_output_at_the_exchange_stage_is_taken_before_the_block() -> None:
    heads = {t: HEADS[t] for t in ("semseg", "depth")}
    torch.manual_seed(0)
    plain = build_network(_small_config(block="none"), heads).eval()
    torch.manual_seed(0)
    exchanged = build_network(_small_config(), heads).eval()
    exchanged.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        before, after = plain(_image()), exchanged(_image())
    for scale in (1, 2, 3, 4):
        assert torch.equal(before["semseg", scale], after["semseg", scale])
    assert not torch.allclose(before["semseg", 0], after["semseg", 0])


@pytest.mark.parametrize("size", [(100, 130), (64, 120), (16, 32)])
def test_unsupported_input_sizes_are_rejected_with_the_nearest_valid_sizes(size: tuple[int, int]) -> None:
    net = build_network(_small_config(), {t: HEADS[t] for t in ("semseg", "depth")})
    with pytest.raises(ValueError, match=f"input size {size[0]}x{size[1]} is not supported") as info:
        net(_image(*size))
    assert "Nearest valid" in str(info.value)
    if size == (100, 130):
        assert "height 100 -> 96 or 112" in str(info.value) and "width 130 -> 128 or 144" in str(info.value)


def test_input_multiple_includes_the_exchange_pooling() -> None:
    two_tasks = {t: HeadSpec(2, (0, 1)) for t in ("semseg", "depth")}
    net = build_network(_small_config(dilation=[False, True, True], stages=[1]), two_tasks)
    assert net.input_multiple == 8
    net = build_network(_small_config(dilation=[True, True, True], stages=[1]), two_tasks)
    assert net.encoder.strides == [2, 4, 4, 4, 4]
    assert net.input_multiple == 8  # stage 1 (stride 2) pools by 4
    with torch.no_grad():
        assert net(_image(40, 48))["depth", 0].shape == (2, 2, 40, 48)
    with pytest.raises(ValueError, match="multiples of 8"):
        net.valid_input_size(44, 48)


def test_padnet_architecture_predicts_initial_and_final_maps() -> None:
    heads = {"semseg": HeadSpec(5, (0, 4)), "depth": HeadSpec(1, (0, 4))}
    net = build_network(ModelConfig(architecture="padnet"), heads)
    predictions = net(_image(32, 64))
    assert {k: tuple(v.shape) for k, v in predictions.items()} == {
        ("semseg", 4): (2, 5, 2, 4), ("semseg", 0): (2, 5, 32, 64),
        ("depth", 4): (2, 1, 2, 4), ("depth", 0): (2, 1, 32, 64),
    }
    sum(p.mean() for p in predictions.values()).backward()
    grouped = [p for group in net.param_groups().values() for p in group]
    assert all(p.grad is not None for p in grouped), "every PAD-Net parameter (initial heads included) is trained"
    with pytest.raises(ValueError, match="scales 0"):
        build_network(ModelConfig(architecture="padnet"), {"semseg": HeadSpec(5, (0, 1))})


def test_param_groups_partition_the_trainable_parameters() -> None:
    net = build_network(_small_config(), {t: HEADS[t] for t in ("semseg", "depth", "normals")})
    net.encoder.layer1.requires_grad_(False)
    groups = net.param_groups()
    assert list(groups) == ["backbone", "decoders", "exchange"]
    grouped = [id(p) for params in groups.values() for p in params]
    trainable = [id(p) for p in net.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped)) and sorted(grouped) == sorted(trainable)
    single = build_network(_small_config(), {"semseg": HEADS["semseg"]})
    assert list(single.param_groups()) == ["backbone", "decoders"]


def test_parameter_counts_match_the_official_resnet101_models() -> None:
    classes = {"semseg": HeadSpec(16, (0, 1)), "depth": HeadSpec(1, (0, 1)), "normals": HeadSpec(3, (0, 1))}
    sd = {t: classes[t] for t in ("semseg", "depth")}
    with torch.device("meta"):
        encoder = ResNetEncoder("resnet101")
        net_sd = build_network(ModelConfig(backbone="resnet101"), sd)
        net_sdn = build_network(ModelConfig(backbone="resnet101"), classes)
        padnet_plus = build_network(ModelConfig(backbone="resnet101", block="padnet", stages=[2]), sd)
        padnet = build_network(
            ModelConfig(backbone="resnet101", architecture="padnet"),
            {"semseg": HeadSpec(16, (0, 4)), "depth": HeadSpec(1, (0, 4))},
        )
    assert _count(encoder) == 42_500_160
    assert _count(net_sd.decoders["depth"].blocks) == 22_061_440
    counts = net_sd.parameter_counts()
    assert counts == {
        "encoder": 42_500_160, "decoder/depth": 22_061_634, "decoder/semseg": 22_064_544,
        "exchange": 773_120, "total": 87_399_458,
    }
    assert net_sdn.parameter_counts()["total"] == 111_006_952
    assert net_sdn.parameter_counts()["exchange"] == 2_318_592
    assert padnet_plus.parameter_counts()["total"] == 87_216_162
    assert padnet.parameter_counts()["total"] == 46_710_370
    text = format_parameter_counts(counts)
    assert "87,399,458" in text and text.splitlines()[0].startswith("encoder")


def test_parameter_counts_match_the_official_survey_baselines() -> None:
    """The paper's STL and MTL baselines (one DeepLab head per task, Cityscapes 16 classes), as the official code."""
    heads = {"semseg": HeadSpec(16, (0,)), "depth": HeadSpec(1, (0,)), "normals": HeadSpec(3, (0,))}
    deeplab = ModelConfig(backbone="resnet101", architecture="deeplab", block="none")
    with torch.device("meta"):
        single = {task: _count(build_network(deeplab, {task: heads[task]})) for task in heads}
        both = _count(build_network(deeplab, {task: heads[task] for task in ("semseg", "depth")}))
    assert single == {"semseg": 58_629_712, "depth": 58_625_857, "normals": 58_626_371}
    assert both == 74_755_409


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_encoder_strides_and_channels(backbone: str) -> None:
    with torch.device("meta"):
        encoder = ResNetEncoder(backbone)
        features = encoder(torch.empty(1, 3, 64, 96))
    assert encoder.strides == [2, 4, 8, 16, 16]
    wide = 4 if backbone in ("resnet50", "resnet101") else 1
    assert encoder.num_channels == [64, 64 * wide, 128 * wide, 256 * wide, 512 * wide]
    assert [tuple(f.shape) for f in features] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(encoder.num_channels, encoder.strides)
    ]


def test_dilated_basic_block_layer_keeps_resolution_and_torchvision_keys() -> None:
    encoder = ResNetEncoder("resnet18", dilation=[False, True, True]).eval()
    assert encoder.strides == [2, 4, 8, 8, 8]
    assert encoder.layer4[1].conv1.dilation == (4, 4) and encoder.layer4[0].conv1.dilation == (2, 2)
    with torch.no_grad():
        assert encoder(_image())[4].shape == (2, 512, 8, 16)
    reference = {k for k in resnet18().state_dict() if not k.startswith("fc.")}
    assert set(encoder.state_dict()) == reference


def test_encoder_loads_a_local_torchvision_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    encoder = ResNetEncoder("resnet18", pretrained=str(path))
    assert torch.equal(encoder.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    assert torch.equal(encoder.bn1.running_var, source.bn1.running_var)


def test_encoder_weight_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        ResNetEncoder("resnet18", pretrained=str(tmp_path / "missing.pth"))
    path = tmp_path / "r34.pth"
    torch.save(resnet34().state_dict(), path)
    with pytest.raises(ValueError, match="not a resnet18 state dict: unexpected"):
        ResNetEncoder("resnet18", pretrained=str(path))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as a tensor state dict"):
        ResNetEncoder("resnet18", pretrained=str(garbage))
    with pytest.raises(ValueError, match="backbone 'resnet19' is unknown"):
        ResNetEncoder("resnet19")


def test_imagenet_weights_come_from_the_torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(url: str, *args, **kwargs) -> None:
        raise OSError(f"offline: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError, match=f"not cached at {cached}.*pretrained: /path/to/file.pth"):
        ResNetEncoder("resnet18", pretrained="imagenet")
    torch.manual_seed(0)
    source = resnet18()
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(source.state_dict(), cached)
    encoder = ResNetEncoder("resnet18", pretrained="imagenet")
    assert torch.equal(encoder.conv1.weight, source.conv1.weight)


def test_multi_frame_encoder_tiles_conv1_so_identical_frames_match_one_frame(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    single = ResNetEncoder("resnet18", pretrained=str(path)).eval()
    pair = ResNetEncoder("resnet18", pretrained=str(path), num_frames=2).eval()
    assert pair.conv1.weight.shape == (64, 6, 7, 7)
    image = _image()
    with torch.no_grad():
        for one, two in zip(single(image), pair(torch.cat([image, image], dim=1))):
            torch.testing.assert_close(one, two, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(B, 6, H, W\)"):
        pair(image)


def test_decoder_block_ranges_compose_to_the_full_decoder() -> None:
    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18").eval()
    decoder = TaskDecoder(encoder.num_channels, encoder.strides, HeadSpec(2, (0, 2)), (8, 16, 16, 32, 32)).eval()
    with torch.no_grad():
        features = encoder(_image())
        full = decoder(features)
        x, upper = decoder.run(features, 4, 2)
        _, lower = decoder.run(features, 1, 0, x)
    assert set(upper) == {2} and set(lower) == {0}
    assert torch.equal(full[2], upper[2]) and torch.equal(full[0], lower[0])
    with pytest.raises(ValueError, match="pass x"):
        decoder.run(features, 1, 0)


def test_decoder_heads_and_scale_checks() -> None:
    encoder = ResNetEncoder("resnet18")
    sigmoid = TaskDecoder(encoder.num_channels, encoder.strides, HeadSpec(1, (0, 3), apply_sigmoid=True)).eval()
    with torch.no_grad():
        outputs = sigmoid(encoder.eval()(_image()))
    assert all(((o > 0) & (o < 1)).all() for o in outputs.values())
    with pytest.raises(ValueError, match="head scale 4 needs stride 16"):
        TaskDecoder(encoder.num_channels, [2, 4, 8, 8, 8], HeadSpec(1, (4,)))
    with pytest.raises(ValueError, match="out of range"):
        TaskDecoder(encoder.num_channels, encoder.strides, HeadSpec(1, (5,)))


def test_aspp_in_training_rejects_a_single_image_clearly() -> None:
    net = build_network(_small_config(), {"semseg": HEADS["semseg"]})
    with pytest.raises(ValueError, match="batch size >= 2"):
        net(_image()[:1])
