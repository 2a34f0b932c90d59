"""Single-task references: keyed per experiment, several seeds, never replaced by another experiment, found from
any working folder, and the delta with its uncertainty."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import yaml

from mtlda.cli import EXPERIMENTS
from mtlda.config import load_config
from mtlda.references import (
    PACKAGED_REFERENCES,
    ReferenceBook,
    ReferenceError,
    ReferenceKey,
    config_fingerprint,
    lookup,
    read_entries,
    references_path,
)
from mtlda.tasks import build_tasks
from mtlda.weights.targets import experiment_scenario

INFO = SimpleNamespace(num_classes=3, palette=[[0, 0, 0], [1, 1, 1], [2, 2, 2]], class_names=("a", "b", "c"))
KEY = ReferenceKey("supervised", "toycity-flat", 3, "64x128", "", "stl")


def config(tmp_path, codes: str, *extra: str):
    return load_config(None, [f"tasks.names=[{codes}]", f"references.file={tmp_path / 'refs.yaml'}",
                              "name=toycity_s_stl", "references.is_reference=true", *extra])


def book(cfg, key=KEY) -> ReferenceBook:
    return ReferenceBook(cfg, key, build_tasks(cfg, INFO))


def test_a_reference_experiment_records_one_result_per_seed_with_mean_and_spread(tmp_path):
    for seed, miou in ((0, 60.0), (1, 64.0), (2, 62.0)):
        cfg = config(tmp_path, "S", f"seed={seed}")
        (ref,) = book(cfg).record({"semseg": {"miou": miou, "pixel_acc": 90.0}}, iterations=150)
    assert ref.count == 3 and ref.iterations == 150
    assert ref.mean()["miou"] == pytest.approx(62.0) and ref.std()["miou"] == pytest.approx(2.0)
    assert ref.standard_error()["miou"] == pytest.approx(2.0 / math.sqrt(3))
    again = book(config(tmp_path, "S", "seed=1")).record({"semseg": {"miou": 70.0, "pixel_acc": 90.0}}, 150)
    assert again[0].count == 3 and again[0].seeds[1]["miou"] == 70.0  # the same seed is replaced, not added
    entries = yaml.safe_load((tmp_path / "refs.yaml").read_text())["entries"]
    assert len(entries) == 1 and entries[0]["key"]["scenario"] == "supervised"


def test_another_experiment_or_other_settings_never_replace_a_reference(tmp_path):
    book(config(tmp_path, "S")).record({"semseg": {"miou": 60.0}}, 150)
    short = config(tmp_path, "S", "train.iterations=2")
    with pytest.raises(ReferenceError, match="other settings .*not replacing it"):
        book(short).record({"semseg": {"miou": 0.3}}, 2)
    other = config(tmp_path, "S", "name=uda_toycity_s_oracle")
    with pytest.raises(ReferenceError, match="recorded by experiment 'toycity_s_stl'"):
        book(other).record({"semseg": {"miou": 80.0}}, 150)
    assert lookup(tmp_path / "refs.yaml", KEY, "semseg", book(short).protocol["semseg"]).mean()["miou"] == 60.0


def test_keys_separate_experiments_that_differ(tmp_path):
    cfg = config(tmp_path, "S")
    book(cfg).record({"semseg": {"miou": 60.0}}, 150)
    uda = ReferenceKey("uda", "toycity-flat", 3, "64x128", "from toycity-textured, adapted", "stl")
    book(cfg, uda).record({"semseg": {"miou": 30.0}}, 150)
    source_only = ReferenceKey("uda", "toycity-flat", 3, "64x128", "from toycity-textured, source-only", "stl")
    protocol = book(cfg).protocol["semseg"]
    path = tmp_path / "refs.yaml"
    assert lookup(path, KEY, "semseg", protocol).mean()["miou"] == 60.0
    assert lookup(path, uda, "semseg", protocol).mean()["miou"] == 30.0
    assert lookup(path, source_only, "semseg", protocol) is None
    assert len(read_entries(path)) == 2


def test_only_declared_single_task_references_record(tmp_path):
    ordinary = config(tmp_path, "S", "references.is_reference=false")
    with pytest.raises(ValueError, match="not a reference experiment"):
        book(ordinary).record({"semseg": {"miou": 1.0}}, 2)
    with pytest.raises(ValueError, match="one task"):
        book(config(tmp_path, "S, D")).record({"semseg": {"miou": 1.0}, "depth": {"rmse": 1.0}}, 2)
    assert not (tmp_path / "refs.yaml").exists()


def test_the_multitask_delta_uses_the_reference_means_and_reports_its_standard_error(tmp_path):
    for seed, (miou, rmse) in enumerate(((60.0, 4.0), (62.0, 4.4))):
        book(config(tmp_path, "S", f"seed={seed}")).record({"semseg": {"miou": miou}}, 150)
        depth = config(tmp_path, "D", f"seed={seed}", "name=toycity_d_stl")
        book(depth).record({"depth": {"rmse": rmse}}, 150)
    multi = config(tmp_path, "S, D", "references.is_reference=false", "name=toycity_sd_mteb")
    delta, error = book(multi).delta({"semseg": {"miou": 66.0}, "depth": {"rmse": 4.0}})
    assert delta == pytest.approx(100 * ((66 - 61) / 61 + (4.2 - 4.0) / 4.2) / 2)
    se_miou, se_rmse = math.sqrt(2) / math.sqrt(2), (0.4 / math.sqrt(2)) / math.sqrt(2)
    assert error == pytest.approx(math.hypot(100 * 66 / (2 * 61**2) * se_miou, 100 * 4.0 / (2 * 4.2**2) * se_rmse))
    assert book(multi, ReferenceKey("supervised", "cityscapes", 3, "64x128", "", "stl")).delta(
        {"semseg": {"miou": 66.0}, "depth": {"rmse": 4.0}}) is None


def test_a_delta_against_references_of_another_training_budget_is_flagged(tmp_path):
    book(config(tmp_path, "S")).record({"semseg": {"miou": 60.0}}, 150)
    book(config(tmp_path, "D", "name=toycity_d_stl")).record({"depth": {"rmse": 4.0}}, 400)
    multi = book(config(tmp_path, "S, D", "references.is_reference=false", "name=toycity_sd_mteb"))
    assert "trained for 150 iterations, this run for 400" in multi.budget_warning(400)
    assert "150/400 iterations" in multi.budget_warning(300)
    same = tmp_path / "same"
    book(config(same, "S")).record({"semseg": {"miou": 60.0}}, 400)
    book(config(same, "D", "name=toycity_d_stl")).record({"depth": {"rmse": 4.0}}, 400)
    multi = book(config(same, "S, D", "references.is_reference=false", "name=toycity_sd_mteb"))
    assert multi.budget_warning(400) is None


def test_the_packaged_file_is_found_from_any_folder_and_a_protocol_change_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert references_path(load_config(None)) == PACKAGED_REFERENCES and PACKAGED_REFERENCES.is_file()
    read_entries(PACKAGED_REFERENCES)
    cfg = config(tmp_path, "D")
    book(cfg).record({"depth": {"rmse": 4.0}}, 150)
    other = config(tmp_path, "D", "tasks.depth_protocol.per_image=true")
    with pytest.raises(ReferenceError, match="recorded under the protocol"):
        book(other).references()


def test_fingerprint_ignores_where_and_how_fast_a_run_goes(tmp_path):
    base = config(tmp_path, "S")
    assert config_fingerprint(base) == config_fingerprint(
        config(tmp_path, "S", "seed=3", "workdir=/elsewhere", "train.threads=1", "data.workers=2", "device=cpu"))
    assert config_fingerprint(base) != config_fingerprint(config(tmp_path, "S", "optim.lr.backbone=0.1"))


def test_a_malformed_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "refs.yaml"
    bad.write_text("version: 1\nentries: []\n")
    with pytest.raises(ReferenceError, match="not a version-2 references file"):
        read_entries(bad)


def test_runs_on_other_validation_scenes_or_a_part_of_the_split_get_other_keys():
    """References (and `mtlda results` rows) are only compared over the same scored samples."""
    def key(*overrides):
        cfg = load_config(EXPERIMENTS / "supervised" / "toycity" / "sdn_mteb.yaml", list(overrides))
        return experiment_scenario(cfg, "meta").reference_key()

    default = key()
    assert default.dataset == "toycity-flat"
    assert key("data.toycity.seed=2").dataset == "toycity-flat-s2"
    assert key("data.toycity.num_val=10").dataset == "toycity-flat-10val"
    assert key("data.max_val_samples=5").dataset == "toycity-flat (first 5)"
    assert key("data.toycity.num_train=120") == default  # the validation scenes do not depend on it
