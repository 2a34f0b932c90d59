"""Importing the official DenseMTL weights: every tensor mapped exactly, outputs equal to an independent forward of
the official network, conventions converted, bad files refused with the key named.

The official layouts come from tests/data/densemtl_state_dict_manifest.json (a dump of the real S-D and S-D-N
Cityscapes models); weights are random, BN statistics and alpha included, so every branch affects the outputs.
"""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtlda.config import load_config
from mtlda.constants import OFFICIAL_DEPTH_INV_OFFSET, OFFICIAL_DEPTH_INV_SCALE
from mtlda.data.batch import Batch
from mtlda.data.nyudv2 import decode_normals
from mtlda.data.registry import dataset_info
from mtlda.data.toycity_export import export_toycity
from mtlda.scenarios.checkpoint import load_checkpoint
from mtlda.tasks import build_tasks
from mtlda.weights import (
    WeightImportError,
    default_fusion_order,
    densemtl_to_mtlda,
    fusion_order_scores,
    fusion_orders,
    import_weights,
    official_output_to_mtlda,
    parse_fusion_order,
)
from mtlda.weights.densemtl import convert_densemtl, permute_fusion_inputs
from mtlda.weights.files import load_state_dict
from mtlda.weights.importer import import_config
from mtlda.weights.targets import build_experiment_model

from official_forward import official_forward, random_official_state

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((Path(__file__).parent / "data" / "densemtl_state_dict_manifest.json").read_text())
EXPERIMENTS = {
    "SD": ROOT / "experiments/supervised/cityscapes/sd_mteb.yaml",
    "SDN": ROOT / "experiments/supervised/cityscapes/sdn_mteb.yaml",
}
TASKS = {"SD": ["depth", "semseg"], "SDN": ["depth", "normals", "semseg"]}
TOLERANCE = 1e-4


def _entries(name: str) -> list[tuple[str, list[int], str]]:
    return [tuple(entry) for entry in MANIFEST["models"][name]["tensors"]]


def _meta_state(name: str) -> dict[str, torch.Tensor]:
    """Shapes-only official state dict, aliases being the very tensors of their originals."""
    state = {}
    for key, shape, dtype in _entries(name):
        alias = key.split(".", 3)
        if alias[0] == "params":
            state[key] = state[f"{'heads' if alias[2] == '0' else 'm'}.{alias[1]}.{alias[3]}"]
        else:
            state[key] = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
    return state


def _image() -> torch.Tensor:
    return torch.rand(MANIFEST["input"], generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def official():
    """name -> random official-layout state dict (built once per module)."""
    return {name: random_official_state(_entries(name), seed=index) for index, name in enumerate(MANIFEST["models"])}


@pytest.fixture(scope="module")
def models():
    """name -> (config, mtlda model built from the mirroring experiment with the import's overrides)."""
    built = {}
    for name, experiment in EXPERIMENTS.items():
        cfg = import_config("densemtl", experiment)
        built[name] = cfg, build_experiment_model(cfg).eval()
    return built


def _mtlda_outputs(model, state, image):
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        return model(image)


def _max_relative_error(mtlda_out, official_out) -> float:
    errors = []
    for key, reference in official_out.items():
        expected = official_output_to_mtlda(key[0], reference)
        assert mtlda_out[key].shape == expected.shape, key
        errors.append(float((mtlda_out[key] - expected).abs().max() / max(1.0, float(expected.abs().max()))))
    return max(errors)


# ------------------------------------------------------------------------------------------------- mapping
def test_manifest_is_the_official_models() -> None:
    for name, total in (("SD", 87_399_458), ("SDN", 111_006_952)):
        entries = _entries(name)
        assert len(entries) == {"SD": 996, "SDN": 1356}[name]
        params = [e for e in entries if not e[0].startswith("params.") and e[2] == "float32"
                  and not e[0].endswith(("running_mean", "running_var"))]
        assert sum(math.prod(shape) for _, shape, _ in params) == total


@pytest.mark.parametrize("name", ["SD", "SDN"])
def test_every_official_tensor_maps_to_exactly_one_mtlda_tensor_of_its_shape(name: str) -> None:
    cfg = import_config("densemtl", EXPERIMENTS[name])
    target = build_experiment_model(cfg, "meta").state_dict()
    state = _meta_state(name)
    result = convert_densemtl(state, TASKS[name], target=target)
    originals = [key for key in state if not key.startswith("params.")]
    assert len(result.state) == len(originals) == len(target)
    assert set(result.state) == set(target)
    assert all(tuple(result.state[k].shape) == tuple(target[k].shape) for k in target)
    assert result.aliases_verified == len(state) - len(originals)
    assert result.side_order == {task: [0, 1] for task in TASKS[name]}
    assert result.stages == [1]


def test_module_roles_follow_the_official_names() -> None:
    state = _meta_state("SD")
    result = convert_densemtl(state, TASKS["SD"])
    pairs = {
        "m.semseg.1.SA_depth.attention.0.weight": "exchange.1.pairs.depth_to_semseg.self_attention.mask_conv.weight",
        "m.semseg.1.SA_depth.conv.weight": "exchange.1.pairs.depth_to_semseg.self_attention.feature_conv.weight",
        "m.semseg.1.SxTAM_depth.conv_b.0.weight": "exchange.1.pairs.depth_to_semseg.query_proj.0.weight",
        "m.semseg.1.SxTAM_depth.conv_c.0.weight": "exchange.1.pairs.depth_to_semseg.key_proj.0.weight",
        "m.semseg.1.SxTAM_depth.conv_d.0.weight": "exchange.1.pairs.depth_to_semseg.value_proj.0.weight",
        "m.depth.1.post.0.weight": "exchange.1.fuse.depth.0.weight",
        "heads.semseg.decoder.0.convs.4.1.weight": "decoders.semseg.blocks.4.reduce.pool_proj.0.weight",
        "heads.semseg.decoder.2.block.0.conv.weight": "decoders.semseg.blocks.4.fuse.1.weight",
        "heads.semseg.decoder.15.weight": "decoders.semseg.sides.1.weight",
    }
    for official_key, mtlda_key in pairs.items():
        assert result.state[mtlda_key] is state[official_key]


# ------------------------------------------------------------------------------------------------- parity
@pytest.mark.slow
@pytest.mark.parametrize("name", ["SD", "SDN"])
def test_imported_model_reproduces_the_official_outputs(name: str, official, models) -> None:
    cfg, model = models[name]
    state = official[name]
    image = _image()
    reference = official_forward(state, image, parse_fusion_order(default_fusion_order(TASKS[name]), TASKS[name]))
    assert {f"{t}/{s}": list(v.shape) for (t, s), v in reference.items()} == MANIFEST["models"][name]["outputs"]
    outputs = _mtlda_outputs(model, densemtl_to_mtlda(state, TASKS[name], target=model.state_dict()), image)
    assert set(outputs) == set(reference)
    assert _max_relative_error(outputs, reference) < TOLERANCE


def test_the_attention_branch_contributes_to_the_compared_outputs(official, models) -> None:
    _, model = models["SD"]
    silenced = {k: (torch.zeros_like(v) if k.endswith(".alpha") else v) for k, v in official["SD"].items()}
    order = parse_fusion_order(default_fusion_order(TASKS["SD"]), TASKS["SD"])
    image = _image()
    reference = official_forward(official["SD"], image, order)
    assert _max_relative_error(official_forward(silenced, image, order), reference) > 1e-3


def test_sdn_fusion_order_is_applied_and_a_wrong_one_is_detected(official, models) -> None:
    _, model = models["SDN"]
    state, image = official["SDN"], _image()
    trained = fusion_orders(TASKS["SDN"])[5]
    reference = official_forward(state, image, parse_fusion_order(trained, TASKS["SDN"]))
    right = _mtlda_outputs(model, densemtl_to_mtlda(state, TASKS["SDN"], trained), image)
    assert _max_relative_error(right, reference) < TOLERANCE
    wrong = _mtlda_outputs(model, densemtl_to_mtlda(state, TASKS["SDN"]), image)
    assert _max_relative_error(wrong, reference) > 1e-2


def _swap_rows(tensor: torch.Tensor) -> torch.Tensor:
    swapped = tensor.clone()
    swapped[[0, 1]] = tensor[[1, 0]]
    return swapped


CORRUPTIONS = {
    "two output channels of one conv": lambda s: {"m.semseg.1.extract_depth.0.weight":
                                                  _swap_rows(s["m.semseg.1.extract_depth.0.weight"])},
    "SA mask and feature convs": lambda s: {
        "m.depth.1.SA_semseg.conv.weight": s["m.depth.1.SA_semseg.attention.0.weight"],
        "m.depth.1.SA_semseg.attention.0.weight": s["m.depth.1.SA_semseg.conv.weight"],
    },
    "SxTAM query and key": lambda s: {f"m.semseg.1.SxTAM_depth.conv_{a}.{p}": s[f"m.semseg.1.SxTAM_depth.conv_{b}.{p}"]
                                      for a, b in (("b", "c"), ("c", "b")) for p in ("0.weight", "1.weight", "1.bias")},
    "two classes of the segmentation head": lambda s: {"heads.semseg.decoder.14.weight":
                                                       _swap_rows(s["heads.semseg.decoder.14.weight"])},
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_permuted_or_misassigned_tensor_is_detected_by_the_outputs(corruption: str, official, models) -> None:
    _, model = models["SD"]
    state, image = official["SD"], _image()
    changed = {key: value for key, value in state.items() if not key.startswith("params.")}
    changed.update(CORRUPTIONS[corruption](state))
    reference = official_forward(state, image, parse_fusion_order(default_fusion_order(TASKS["SD"]), TASKS["SD"]))
    outputs = _mtlda_outputs(model, densemtl_to_mtlda(changed, TASKS["SD"]), image)
    assert _max_relative_error(outputs, reference) > 1e-3


def test_domain_adaptation_side_order_is_detected_and_reproduced(official, models) -> None:
    _, model = models["SD"]
    swap = {"decoder.14.": "decoder.15.", "decoder.15.": "decoder.14."}
    state = {}
    for key, value in official["SD"].items():
        for old, new in swap.items():
            if old in key:
                key = key.replace(old, new)
                break
        state[key] = value
    image = _image()
    reference = official_forward(state, image, parse_fusion_order(default_fusion_order(TASKS["SD"]), TASKS["SD"]),
                                 active_scales=(1, 0))
    result = convert_densemtl(state, TASKS["SD"], target=model.state_dict())
    assert result.side_order == {"depth": [1, 0], "semseg": [1, 0]}
    assert _max_relative_error(_mtlda_outputs(model, result.state, image), reference) < TOLERANCE


def test_decoded_depth_is_the_metric_depth_the_official_head_regressed(models) -> None:
    cfg, _ = models["SD"]
    assert cfg.tasks.depth_inv_scale == OFFICIAL_DEPTH_INV_SCALE
    assert cfg.tasks.depth_inv_offset == OFFICIAL_DEPTH_INV_OFFSET
    assert cfg.model.input_norm == "monodepth"
    depth = build_tasks(cfg, dataset_info(cfg.data))["depth"]
    metres = torch.tensor([0.5, 1.0, 10.0, 80.0]).view(1, 1, 2, 2)
    official_target = 65536.0 / (100.0 * metres + 1.0)
    torch.testing.assert_close(depth.decode(official_target), metres, rtol=1e-5, atol=1e-5)
    raw = torch.rand(1, 1, 4, 4) * 100 + 1
    torch.testing.assert_close(depth.decode(raw), 655.36 / raw - 0.01)


def test_normals_head_is_converted_to_the_camera_facing_convention(official) -> None:
    converted = densemtl_to_mtlda(official["SDN"], TASKS["SDN"])
    for scale in (0, 1):
        weight = official["SDN"][f"heads.normals.decoder.{14 + scale}.weight"]
        new = converted[f"decoders.normals.sides.{scale}.weight"]
        torch.testing.assert_close(new[:2], weight[:2])
        torch.testing.assert_close(new[2], -weight[2])
    fronto_parallel = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert official_output_to_mtlda("normals", fronto_parallel).flatten().tolist() == [0.0, 0.0, -1.0]


def test_nyudv2_normals_head_is_converted_from_the_files_axes(official) -> None:
    """The official NYUDv2 head learns the normals files as stored: an imported head must predict what mtlda's
    NYUDv2 loader reads from those files (a floor, a wall facing the camera and a slanted surface)."""
    file_values = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.0, 0.8]])
    read, valid = decode_normals(file_values.view(1, 3, 3).numpy())
    official_raw = file_values.T.reshape(1, 3, 1, 3)
    expected = torch.from_numpy(read).permute(2, 0, 1).unsqueeze(0)
    assert valid.all()
    torch.testing.assert_close(official_output_to_mtlda("normals", official_raw, "nyudv2"), expected)
    converted = densemtl_to_mtlda(official["SDN"], TASKS["SDN"], dataset="nyudv2")
    for scale in (0, 1):
        weight = official["SDN"][f"heads.normals.decoder.{14 + scale}.weight"]
        new = converted[f"decoders.normals.sides.{scale}.weight"]
        torch.testing.assert_close(new, weight * torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1, 1))


# ---------------------------------------------------------------------------------------------- fusion order
def test_fusion_orders_list_every_per_target_permutation_sorted_first() -> None:
    assert fusion_orders(["semseg", "depth"]) == ["depth=semseg,semseg=depth"]
    orders = fusion_orders(TASKS["SDN"])
    assert len(orders) == len(set(orders)) == 8
    assert orders[0] == default_fusion_order(TASKS["SDN"])
    assert orders[0] == "depth=normals+semseg,normals=depth+semseg,semseg=depth+normals"
    for name in orders:
        assert parse_fusion_order(name, TASKS["SDN"]) == parse_fusion_order(
            ",".join(reversed(name.split(","))), TASKS["SDN"])
    with pytest.raises(WeightImportError, match="--list-fusion-orders"):
        parse_fusion_order("depth=semseg+semseg,normals=depth+semseg,semseg=depth+normals", TASKS["SDN"])


def test_permuting_fusion_inputs_moves_whole_channel_blocks() -> None:
    weight = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1, 1)
    moved = permute_fusion_inputs(weight, ["normals", "depth"], ["depth", "normals"])
    torch.testing.assert_close(moved, torch.cat([weight[:, 3:], weight[:, :3]], dim=1))


def test_fusion_order_scores_rank_the_order_that_produced_the_labels_first() -> None:
    cfg = load_config(ROOT / "experiments/supervised/toycity/sdn_mteb.yaml", ["data.height=64", "data.width=128"])
    torch.manual_seed(0)
    model = build_experiment_model(cfg).eval()
    for name, parameter in model.named_parameters():
        if name.endswith(".alpha"):
            parameter.data.uniform_(0.5, 1.5)
    state = model.state_dict()
    swapped = dict(state)
    for target, sources in (("semseg", ["depth", "normals"]), ("normals", ["depth", "semseg"])):
        key = f"exchange.1.fuse.{target}.0.weight"
        swapped[key] = permute_fusion_inputs(state[key], sources, sources[::-1])
    image = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        predictions = model(image)
    batch = Batch(image=image, K=torch.eye(3).expand(2, 3, 3),
                  targets={"semseg": predictions[("semseg", 0)].argmax(1),
                           "normals": F.normalize(predictions[("normals", 0)], dim=1)},
                  masks={"normals": torch.ones(2, 1, 64, 128, dtype=torch.bool)})
    tasks = {name: task for name, task in build_tasks(cfg, dataset_info(cfg.data)).items() if name != "depth"}
    scores = fusion_order_scores(lambda: build_experiment_model(cfg), {"labels' order": state, "swapped": swapped},
                                 [batch], tasks)
    assert scores["labels' order"] > 0 > scores["swapped"]


# ---------------------------------------------------------------------------------------------------- errors
def test_aliases_that_disagree_are_refused_naming_the_alias() -> None:
    state = _meta_state("SD")
    state["heads.depth.decoder.14.bias"] = torch.zeros(1)
    state["params.depth.0.decoder.14.bias"] = torch.ones(1)
    with pytest.raises(WeightImportError, match=r"alias params\.depth\.0\.decoder\.14\.bias differs"):
        densemtl_to_mtlda(state, TASKS["SD"])


def test_missing_extra_and_misshaped_keys_are_refused_naming_the_key(models) -> None:
    target = build_experiment_model(models["SD"][0], "meta").state_dict()
    missing = _meta_state("SD")
    del missing["heads.depth.decoder.13.block.0.conv.bias"], missing["params.depth.0.decoder.13.block.0.conv.bias"]
    with pytest.raises(WeightImportError, match=r"does not provide: decoders\.depth\.blocks\.0\.fuse\.1\.bias"):
        densemtl_to_mtlda(missing, TASKS["SD"], target=target)
    extra = {**_meta_state("SD"), "heads.depth.decoder.99.weight": torch.empty(1, device="meta")}
    with pytest.raises(WeightImportError, match=r"no rule maps: heads\.depth\.decoder\.99\.weight"):
        densemtl_to_mtlda(extra, TASKS["SD"], target=target)
    misshaped = _meta_state("SD")
    for key in ("heads.semseg.decoder.14.weight", "params.semseg.0.decoder.14.weight"):
        misshaped[key] = torch.empty(19, 64, 1, 1, device="meta")
    misshaped["params.semseg.0.decoder.14.weight"] = misshaped["heads.semseg.decoder.14.weight"]
    with pytest.raises(WeightImportError,
                       match=r"decoders\.semseg\.sides\.0\.weight \(19, 64, 1, 1\) in the file vs \(16, 64, 1, 1\)"):
        densemtl_to_mtlda(misshaped, TASKS["SD"], target=target)
    with pytest.raises(WeightImportError, match=r"holds the tasks \['depth', 'semseg'\]"):
        densemtl_to_mtlda(_meta_state("SD"), TASKS["SDN"])


def test_experiments_that_do_not_mirror_the_official_model_are_refused() -> None:
    with pytest.raises(WeightImportError, match=r"model\.aspp_rates is \[12, 24, 36\].*model\.fusion is 'prod'"):
        import_config("densemtl", EXPERIMENTS["SD"], ["model.fusion=prod", "model.aspp_rates=[12,24,36]"])


def test_a_file_that_is_not_plain_data_gets_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "pickled_model.pkl"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(WeightImportError, match=r"weights_only=True.*re-save the state dict alone"):
        load_state_dict(path, str(path))
    with pytest.raises(WeightImportError, match="not found"):
        load_state_dict(tmp_path / "absent.pkl", "absent.pkl")


# -------------------------------------------------------------------------------------------------- import
def test_import_writes_a_weights_only_checkpoint_that_loads_strictly(tmp_path: Path, official) -> None:
    source = tmp_path / "cs_densemtl_SD.pkl"
    torch.save(official["SD"], source)
    provenance = import_weights(source, "densemtl", EXPERIMENTS["SD"], tmp_path / "cs_sd.pt")
    ckpt = load_checkpoint(tmp_path / "cs_sd.pt")
    assert ckpt["iteration"] == 0 and ckpt["source"] == provenance
    assert provenance["fusion_order"] == "depth=semseg,semseg=depth" and provenance["aliases_verified"] == 186
    assert len(provenance["sha256"]) == 64
    cfg = load_config(None, [], stored=ckpt["config"])
    assert (cfg.model.input_norm, cfg.model.pretrained, cfg.tasks.depth_inv_offset) == ("monodepth", "none", 0.01)
    model = build_experiment_model(cfg, "meta")
    model.load_state_dict(ckpt["modules"]["model"], strict=True, assign=True)
    torch.testing.assert_close(model.state_dict()["encoder.conv1.weight"],
                               official["SD"]["backbone.encoder.conv1.weight"])


@pytest.mark.slow
def test_calibration_scores_every_fusion_order_on_validation_images_and_imports_the_best(tmp_path: Path, official,
                                                                                         monkeypatch, capsys) -> None:
    root = tmp_path / "cityscapes"
    export_toycity(root, "cityscapes", height=64, width=128, num_train=1, num_val=2, seed=0)
    source = tmp_path / "cs_densemtl_SDN.pkl"
    torch.save(official["SDN"], source)
    small = ["--set", "data.height=64", "--set", "data.width=128"]
    code, _, err = _script(str(source), "--config", str(EXPERIMENTS["SDN"]), "--out", str(tmp_path / "cs_sdn.pt"),
                           "--calibrate-on", str(root), "--images", "3", *small, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    provenance = load_checkpoint(tmp_path / "cs_sdn.pt")["source"]
    calibration = provenance["fusion_order_calibration"]
    scores = calibration["scores"]
    assert sorted(scores) == sorted(fusion_orders(TASKS["SDN"])) and len(set(scores.values())) > 1
    assert provenance["fusion_order"] == max(scores, key=scores.get)
    assert abs(sum(scores.values())) < 1e-6 and (calibration["split"], calibration["images"]) == ("val", 3)
    expected = densemtl_to_mtlda(official["SDN"], TASKS["SDN"], provenance["fusion_order"])
    stored = load_checkpoint(tmp_path / "cs_sdn.pt")["modules"]["model"]
    for key in ("exchange.1.fuse.semseg.0.weight", "exchange.1.fuse.normals.0.weight"):
        torch.testing.assert_close(stored[key], expected[key])
    with pytest.raises(WeightImportError, match="either --fusion-order or --calibrate-on"):
        import_weights(source, "densemtl", EXPERIMENTS["SDN"], tmp_path / "x.pt", fusion_order=provenance[
            "fusion_order"], overrides=[f"data.root={root}"], calibrate=1)
    assert not (tmp_path / "x.pt").exists()


def _script(*args: str, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["import_weights.py", *args])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "scripts/import_weights.py"), run_name="__main__")
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def test_cli_lists_fusion_orders_and_reports_bad_input_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("MTLDA_DEBUG", raising=False)
    code, out, err = _script("--list-fusion-orders", "--config", str(EXPERIMENTS["SDN"]), monkeypatch=monkeypatch,
                             capsys=capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 8 and lines[0].endswith("(default: mtlda's sorted order)")
    code, _, err = _script(str(tmp_path / "absent.pkl"), "--config", str(EXPERIMENTS["SD"]), "--out",
                           str(tmp_path / "x.pt"), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and err.startswith("error: weight file not found") and len(err.splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()
    code, _, err = _script("w.pkl", "--config", str(EXPERIMENTS["SD"]), "--out", "x.pt", "--side-order", "one,zero",
                           monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "comma-separated integers" in err
