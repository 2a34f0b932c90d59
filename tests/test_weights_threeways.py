"""Importing the 3-ways self-supervised depth model (Hoyer et al.) as an mtlda SDE pretrain checkpoint.

tests/data/threeways_checkpoint_manifest.json is the layout written down from the 3-ways code (no released file is
at hand); the tests check that it maps exactly onto the SDE pretrain modules and that the imported depth network and
pose net compute what the 3-ways networks compute.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest
import torch

from mtlda.config import load_config
from mtlda.constants import INPUT_NORMALISATIONS
from mtlda.scenarios.checkpoint import load_checkpoint
from mtlda.scenarios.engine import Engine
from mtlda.scenarios.registry import scenario_class
from mtlda.scenarios.sde import load_pretrained_depth
from mtlda.weights import WeightImportError, import_weights, read_threeways, threeways_to_mtlda
from mtlda.weights.importer import import_config
from mtlda.weights.targets import build_experiment_modules

from official_forward import random_official_state, threeways_depth_forward, threeways_pose_forward

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
MANIFEST = json.loads((DATA / "threeways_checkpoint_manifest.json").read_text())
DENSEMTL = json.loads((DATA / "densemtl_state_dict_manifest.json").read_text())
PRETRAIN = ROOT / "experiments/sde/cityscapes/pretrain.yaml"


@pytest.fixture(scope="module")
def files():
    return {name: random_official_state([tuple(e) for e in entries], seed=i)
            for i, (name, entries) in enumerate(MANIFEST["files"].items())}


def _meta_files():
    return {name: {key: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for key, shape, dtype in entries}
            for name, entries in MANIFEST["files"].items()}


def _targets(device: str = "meta"):
    modules = build_experiment_modules(import_config("threeways", PRETRAIN), device)
    return modules, {name: module.state_dict() for name, module in modules.items()}


def test_manifest_has_the_parameter_counts_of_the_3ways_networks() -> None:
    counts = {name: sum(math.prod(shape) for key, shape, dtype in entries
                        if dtype == "float32" and not key.endswith(("running_mean", "running_var")))
              for name, entries in MANIFEST["files"].items()}
    assert counts == {"encoder.pth": 42_500_160, "depth.pth": 22_066_628, "pose_encoder.pth": 11_185_920,
                      "pose.pth": 1_314_572}


def test_depth_decoder_body_has_the_positional_layout_of_the_real_densemtl_dump() -> None:
    body = {key: shape for key, shape, _ in MANIFEST["files"]["depth.pth"] if int(key.split(".")[1]) < 14}
    official = {key[len("heads.depth."):]: shape for key, shape, _ in DENSEMTL["models"]["SD"]["tensors"]
                if key.startswith("heads.depth.decoder.") and int(key.split(".")[3]) < 14}
    assert body == official


def test_every_file_tensor_maps_to_exactly_one_pretrain_tensor_of_its_shape() -> None:
    _, targets = _targets()
    states = threeways_to_mtlda(_meta_files(), targets)
    for module, target in targets.items():
        assert set(states[module]) == set(target)
        assert all(tuple(states[module][k].shape) == tuple(target[k].shape) for k in target)
    assert sum(len(entries) for entries in MANIFEST["files"].values()) == sum(len(t) for t in targets.values())


def test_imported_depth_and_pose_networks_compute_what_the_3ways_networks_compute(files) -> None:
    modules, targets = _targets("cpu")
    for name, state in threeways_to_mtlda(files, targets).items():
        modules[name].load_state_dict(state, strict=True)
    model, pose = modules["model"].eval(), modules["pose"].eval()
    image = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outputs = model(image)
    reference = threeways_depth_forward(files["encoder.pth"], files["depth.pth"], image)
    for scale, expected in reference.items():
        torch.testing.assert_close(outputs[("disp", scale)], expected, rtol=1e-4, atol=1e-5)
    # The pose net sees the 3-ways normalisation (x - 0.45) / 0.225 through model.input_norm=monodepth.
    mean, _ = INPUT_NORMALISATIONS["monodepth"]
    assert torch.equal(pose.encoder.mean.flatten(), torch.tensor(mean).repeat(2))
    later = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        axis_angle, translation = pose(image, later)
    expected_rotation, expected_translation = threeways_pose_forward(files["pose_encoder.pth"], files["pose.pth"],
                                                                     image, later)
    torch.testing.assert_close(axis_angle, expected_rotation, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(translation, expected_translation, rtol=1e-4, atol=1e-7)


def test_folder_and_zip_are_read_and_a_missing_file_is_named(tmp_path: Path, files) -> None:
    folder = tmp_path / "mono"
    folder.mkdir()
    for name in ("depth.pth", "pose.pth", "pose_encoder.pth"):
        torch.save(files[name], folder / name)
    with pytest.raises(WeightImportError, match="lacks encoder.pth"):
        read_threeways(folder)
    torch.save(files["encoder.pth"], folder / "encoder.pth")
    archive = tmp_path / "mono.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name in files:
            handle.write(folder / name, f"mono/{name}")
    for source in (folder, archive):
        tensors, _ = read_threeways(source)
        assert set(tensors) == set(files)
        torch.testing.assert_close(tensors["pose.pth"]["net.3.bias"], files["pose.pth"]["net.3.bias"])


def test_import_writes_a_pretrain_checkpoint_for_sde_init(tmp_path: Path, files) -> None:
    folder = tmp_path / "mono"
    folder.mkdir()
    for name, state in files.items():
        torch.save(state, folder / name)
    import_weights(folder, "threeways", PRETRAIN, tmp_path / "pretrain.pt")
    ckpt = load_checkpoint(tmp_path / "pretrain.pt")
    assert ckpt["config"]["scenario"] == "sde" and ckpt["config"]["sde"]["stage"] == "pretrain"
    assert ckpt["config"]["model"]["input_norm"] == "monodepth"
    assert set(ckpt["modules"]) == {"model", "pose"}
    torch.testing.assert_close(ckpt["modules"]["pose"]["decoder.predict.weight"], files["pose.pth"]["net.3.weight"][:6])
    assert set(ckpt["source"]["sha256"]) == set(files)


@pytest.mark.parametrize("experiment", ["supervised/toycity/sdn_mteb.yaml", "uda/toycity/sd_mteb.yaml",
                                        "sde/toycity/pretrain.yaml", "sde/toycity/sd_mteb.yaml"])
def test_import_targets_are_the_modules_the_scenarios_build(experiment: str, tmp_path: Path) -> None:
    cfg = load_config(ROOT / "experiments" / experiment, [f"workdir={tmp_path}"])
    engine = Engine(cfg, tmp_path, torch.device("cpu"), show_progress=False)
    built = scenario_class(cfg.scenario)(cfg, engine, train=False, with_data=False).modules()
    for name, module in build_experiment_modules(cfg, "meta").items():
        shapes = {key: tuple(value.shape) for key, value in module.state_dict().items()}
        assert shapes == {key: tuple(value.shape) for key, value in built[name].state_dict().items()}


def test_a_mismatched_experiment_is_refused() -> None:
    with pytest.raises(WeightImportError, match=r"sde\.max_depth is 80\.0"):
        import_config("threeways", PRETRAIN, ["sde.max_depth=80"])


@pytest.mark.filterwarnings("ignore:.*meta parameter in the current model")
def test_sde_multitask_stage_accepts_the_imported_checkpoint(tmp_path: Path, files) -> None:
    folder = tmp_path / "mono"
    folder.mkdir()
    for name, state in files.items():
        torch.save(state, folder / name)
    import_weights(folder, "threeways", PRETRAIN, tmp_path / "pretrain.pt")
    cfg = load_config(ROOT / "experiments/sde/cityscapes/sd_mteb.yaml", ["model.pretrained=none"])
    modules = build_experiment_modules(cfg, "meta")
    copied = load_pretrained_depth(modules["model"], modules["pose"], tmp_path / "pretrain.pt")
    assert "disp.sides.0.1.weight" in copied
