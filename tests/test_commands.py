"""The ``mtlda`` command: dispatch to the subcommands, help, bad commands; export-weights on a tiny trained run."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mtlda
from mtlda.commands import COMMANDS, main, run
from mtlda.errors import MtldaError, UserInputError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "train.iterations=2", "--set", "data.toycity.num_train=8", "--set", "data.toycity.num_val=4",
        "--set", "data.height=64", "--set", "data.width=128", "--set", "data.toycity.height=64",
        "--set", "data.toycity.width=128", "--set", "data.batch_size=4", "--set", "data.val_batch_size=4",
        "--set", "train.image_every=0", "--set", "train.threads=1"]


def run_console(args, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mtlda", *map(str, args)])
    monkeypatch.delenv("MTLDA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        run()
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_help_lists_every_command_with_its_summary_without_importing_torch(tmp_path):
    code = ("import sys; from mtlda.commands import main; code = main(['-h']); "
            "assert 'torch' not in sys.modules; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name, command in COMMANDS.items():
        assert any(line.split()[:1] == [name] and command.summary in line for line in lines), name


def test_every_built_in_command_has_a_module():
    built_in = {name: c.module for name, c in COMMANDS.items() if c.module}
    assert {"train", "uda", "sde", "evaluate", "predict", "results", "export-weights"} <= set(built_in)
    assert [m for m in built_in.values() if importlib.util.find_spec(m) is None] == []


def test_unknown_command_exits_2_listing_the_valid_ones(monkeypatch, capsys):
    code, out, err = run_console(["trian"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1
    assert lines[0].startswith("error: unknown command 'trian': did you mean train?")
    assert all(name in lines[0] for name in COMMANDS)


def test_commands_not_built_in_yet_fail_clearly(monkeypatch, capsys):
    pending = [name for name, command in COMMANDS.items() if command.module is None]
    for name in pending:
        code, _, err = run_console([name, "--help"], monkeypatch, capsys)
        assert code == 2 and f"mtlda {name} is not built into this version yet" in err


def test_no_command_prints_the_help_and_exits_2(monkeypatch, capsys):
    code, _, err = run_console([], monkeypatch, capsys)
    assert code == 2 and "commands:" in err


def test_command_help_is_the_command_own(monkeypatch, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["results", "-h"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mtlda results") and "--plots DIR" in out


@pytest.mark.slow
def test_python_m_mtlda_train_prints_the_config_outside_the_repository(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mtlda", "train", "--print-config", "--set", "train.iterations=2"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "name: toycity_sdn_mteb" in done.stdout and "iterations: 2" in done.stdout


@pytest.fixture(scope="module")
def trained(module_tmp, one_thread) -> Path:
    """The folder of a 2-iteration toycity run trained through ``mtlda train``."""
    folder = module_tmp
    code = main(["train", *TINY, "--set", f"data.toycity.cache_dir={folder / 'cache'}",
                 "--set", f"references.file={folder / 'refs.yaml'}", "--workdir", str(folder / "run")])
    assert code == 0
    return folder / "run"


@pytest.mark.slow
def test_export_weights_is_smaller_and_predicts_the_same(trained, tmp_path, capsys):
    weights = tmp_path / "model.pt"
    assert main(["export-weights", str(trained / "last.pt"), "--out", str(weights)]) == 0
    assert weights.stat().st_size < 0.5 * (trained / "last.pt").stat().st_size
    stored = torch.load(weights, weights_only=True)
    assert set(stored["modules"]) == {"model"} and "optimizers" not in stored and "rng" not in stored
    assert stored["config"]["name"] == "toycity_sdn_mteb" and stored["metadata"]["class_names"]
    image = torch.rand(3, 64, 128, generator=torch.Generator().manual_seed(0))
    full, light = mtlda.load_model(trained / "last.pt").predict(image), mtlda.load_model(weights).predict(image)
    assert sorted(light.maps) == ["depth", "normals", "semseg"]
    for task in full.maps:
        assert torch.equal(full.maps[task], light.maps[task]), task


@pytest.mark.slow
def test_predict_and_evaluate_accept_the_weights_file(trained, tmp_path, capsys):
    from mtlda.data.io import write_image

    weights = tmp_path / "model.pt"
    assert main(["export-weights", str(trained / "last.pt"), "--out", str(weights)]) == 0
    image = tmp_path / "street.png"
    write_image(image, np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8))
    assert main(["predict", str(weights), str(image), "--out", str(tmp_path / "pred")]) == 0
    assert np.load(tmp_path / "pred" / "street_depth.npy").shape == (64, 128)
    assert main(["evaluate", str(weights), "--workdir", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "eval-model.json").is_file()


@pytest.mark.slow
def test_evaluate_splits_the_depth_errors_by_class(trained, tmp_path, capsys):
    assert main(["evaluate", str(trained / "last.pt"), "--depth-by-class", "--workdir", str(tmp_path)]) == 0
    stored = json.loads((tmp_path / "eval-last-depth-by-class.json").read_text())["rows"]
    assert set(stored) == {"trivial: pixel prior", "last.pt"} and "road" in stored["last.pt"]
    assert stored["last.pt"]["all"]["abs_rel"] != stored["trivial: pixel prior"]["all"]["abs_rel"]
    text = (tmp_path / "eval-last-depth-by-class.md").read_text()
    assert text in capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| class")]
    classes = {line.split(" | ")[0][2:] for line in lines}
    assert {"road", "all (pooled pixels)"} <= classes
    assert "trivial: pixel prior: AbsRel" in text and "last.pt: AbsRel" in text
    shares = [float(line.split(" | ")[1]) for line in lines[:-1]]
    assert sum(shares) == pytest.approx(100.0, abs=0.1 * len(shares))


@pytest.mark.slow
def test_evaluate_with_adabn_stores_a_row_of_its_own_and_leaves_the_checkpoint(trained, tmp_path, capsys):
    checkpoint = trained / "last.pt"
    stored = checkpoint.read_bytes()
    cut = ["--set", "data.max_val_samples=4", "--workdir", str(tmp_path)]
    assert main(["evaluate", str(checkpoint), *cut]) == 0
    # the validation cut (max_val_samples) does not cut the training images AdaBN reads
    assert main(["evaluate", str(checkpoint), "--adabn", "6", *cut]) == 0
    plain, adapted = (json.loads((tmp_path / f"eval-last{s}.json").read_text()) for s in ("", "-adabn6"))
    assert adapted["name"] == plain["name"] + "_adabn6" and adapted["key"] == plain["key"]
    assert adapted["results"] != plain["results"]  # the statistics changed the predictions
    assert "re-estimated on the first 6 images of the 'train' split" in (tmp_path / "eval-last-adabn6.md").read_text()
    assert main(["evaluate", str(checkpoint), "--adabn", "6", "--adabn-layers", "encoder.bn1", "--depth-by-class",
                 *cut]) == 0
    assert (tmp_path / "eval-last-adabn6-encoder.bn1-depth-by-class.json").is_file()
    stem = json.loads((tmp_path / "eval-last-adabn6-encoder.bn1.json").read_text())
    assert stem["name"] == plain["name"] + "_adabn6_encoder.bn1" and stem["results"] not in (plain["results"],
                                                                                            adapted["results"])
    assert "of encoder.bn1 re-estimated" in (tmp_path / "eval-last-adabn6-encoder.bn1.md").read_text()
    with pytest.raises(UserInputError, match="no BatchNorm layer is named 'encoder.nope'"):
        main(["evaluate", str(checkpoint), "--adabn", "6", "--adabn-layers", "encoder.nope", *cut])
    assert checkpoint.read_bytes() == stored


def test_evaluate_refuses_an_adabn_count_below_two(monkeypatch, capsys):
    for count in ("-3", "1"):
        code, _, err = run_console(["evaluate", "missing.pt", "--adabn", count], monkeypatch, capsys)
        assert code == 2 and "--adabn" in err and ">= 2" in err
    code, _, err = run_console(["evaluate", "missing.pt", "--adabn-layers", "encoder.bn1"], monkeypatch, capsys)
    assert code == 2 and "add --adabn N" in err


def test_export_weights_refuses_to_overwrite_its_checkpoint(tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"training state")
    code, _, err = run_console(["export-weights", checkpoint, "--out", checkpoint], monkeypatch, capsys)
    assert code == 2 and "is the input file itself" in err
    assert checkpoint.read_bytes() == b"training state"


@pytest.mark.slow
def test_train_evaluate_without_an_experiment_writes_beside_the_checkpoint_or_into_workdir(trained, tmp_path):
    """`train --evaluate CKPT` takes the common options and, like `mtlda evaluate`, writes its eval-* files beside
    the checkpoint (not into the run folder named in the checkpoint's config) unless --workdir says where."""
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy2(trained / "last.pt", moved / "last.pt")
    before = sorted(p.name for p in trained.iterdir())
    assert main(["train", "--evaluate", str(moved / "last.pt"), "--set", "data.max_val_samples=4"]) == 0
    assert (moved / "eval-last.json").is_file() and sorted(p.name for p in trained.iterdir()) == before
    assert main(["train", "--evaluate", str(moved / "last.pt"), "--workdir", str(tmp_path / "elsewhere"),
                 "--set", "data.max_val_samples=4"]) == 0
    assert (tmp_path / "elsewhere" / "eval-last.json").is_file()
    with pytest.raises(MtldaError, match="bogus"):
        main(["train", "--evaluate", str(moved / "last.pt"), "--device", "bogus"])
