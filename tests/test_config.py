"""Experiment configs: inheritance, deep merge, overrides, variables, strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlda.config import ConfigError, dump_config, load_config, parse_scalar, save_config


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_deep_merge_later_wins(tmp_path):
    write(tmp_path / "_base_/a.yaml", "name: a\noptim: {lr: {backbone: 1e-4, decoders: 2e-4}, betas: [0.9, 0.9]}\n")
    write(tmp_path / "_base_/b.yaml", "_base_: a.yaml\noptim: {lr: {decoders: 3e-4}}\nmodel: {backbone: resnet34}\n")
    write(tmp_path / "c.yaml", "_base_: [_base_/b.yaml]\nname: c\nmodel: {block: padnet}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.name == "c"
    assert cfg.optim.lr["backbone"] == 1e-4 and cfg.optim.lr["decoders"] == 3e-4
    assert cfg.optim.lr["exchange"] == 1e-3  # untouched default survives the deep merge
    assert cfg.optim.betas == [0.9, 0.9]
    assert (cfg.model.backbone, cfg.model.block) == ("resnet34", "padnet")


def test_list_of_bases_in_order(tmp_path):
    write(tmp_path / "x.yaml", "seed: 1\nname: x\n")
    write(tmp_path / "y.yaml", "seed: 2\n")
    write(tmp_path / "z.yaml", "_base_: [x.yaml, y.yaml]\n")
    cfg = load_config(tmp_path / "z.yaml")
    assert (cfg.seed, cfg.name) == (2, "x")


def test_overrides_parse_yaml_scalars(tmp_path):
    cfg = load_config(None, ["optim.lr.backbone=1e-4", "train.iterations=7", "data.crop=[64, 96]",
                             "model.use_alpha=false", "name=run"])
    assert isinstance(cfg.optim.lr["backbone"], float) and cfg.optim.lr["backbone"] == 1e-4
    assert cfg.train.iterations == 7 and cfg.data.crop == [64, 96] and cfg.model.use_alpha is False
    assert parse_scalar("1e-4") == 1e-4 and parse_scalar("5") == 5 and parse_scalar("abc") == "abc"


def test_yaml_files_read_exponent_floats(tmp_path):
    cfg = load_config(write(tmp_path / "f.yaml", "optim: {weight_decay: 5e-4}\n"))
    assert cfg.optim.weight_decay == 5e-4


def test_env_and_config_substitution(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLDA_TEST_ROOT", "/data/cs")
    cfg = load_config(write(tmp_path / "e.yaml", "name: exp\ndata: {root: '${MTLDA_TEST_ROOT}/leftImg8bit'}\n"),
                      ["seed=3"])
    assert cfg.data.root == "/data/cs/leftImg8bit"
    assert cfg.workdir == "runs/exp/s3"
    cfg = load_config(None, ["data.root=${MTLDA_UNSET_VAR:-/fallback}"])
    assert cfg.data.root == "/fallback"


def test_unset_variable_names_variable_key_and_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MTLDA_UNSET_VAR", raising=False)
    path = write(tmp_path / "v.yaml", "data: {root: '${MTLDA_UNSET_VAR}'}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "MTLDA_UNSET_VAR" in str(err.value) and "data.root" in str(err.value) and str(path) in str(err.value)


def test_unknown_key_names_file_path_and_closest(tmp_path):
    write(tmp_path / "base.yaml", "model: {backbone: resnet18}\n")
    path = write(tmp_path / "bad.yaml", "_base_: base.yaml\nmodel: {decoder_chanels: [1, 2]}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path.resolve()) in msg and "model.decoder_chanels" in msg and "model.decoder_channels" in msg


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.yaml", "trian: {iterations: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "top.yaml", "_base_: base.yaml\n"))
    assert str(base.resolve()) in str(err.value) and "'train'" not in str(err.value) and "train" in str(err.value)


def test_wrong_types_rejected(tmp_path):
    with pytest.raises(ConfigError, match="train.iterations: expected int"):
        load_config(None, ["train.iterations=1.5"])
    with pytest.raises(ConfigError, match="model.use_alpha: expected bool"):
        load_config(None, ["model.use_alpha=3"])
    with pytest.raises(ConfigError, match=r"data.crop\[0\]: expected int"):
        load_config(write(tmp_path / "t.yaml", "data: {crop: [a, 3]}\n"))


def test_missing_file_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    write(tmp_path / "p.yaml", "_base_: q.yaml\n")
    write(tmp_path / "q.yaml", "_base_: p.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "p.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr.backbone=2e-5", "data.frames=[-1, 1]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert "2.0e-05" in dump_config(cfg) or "2e-05" in dump_config(cfg)
