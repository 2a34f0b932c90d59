"""mtlda results (and its alias scripts/results.py): runs aggregated over seeds into mean ± std with the combined
Δ_MTL uncertainty, mismatched protocols and repeated seeds refused, config differences warned, plots written."""

from __future__ import annotations

import json
import math
import runpy
import struct
import sys
from pathlib import Path

import pytest
import yaml

from mtlda import plots
from mtlda.report import columns

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = {"semseg": "semseg: 3 classes", "depth": "depth: per-pixel"}
CLASSES = ["road", "car", "sky"]
CONFIG = {"name": "mteb", "seed": 0, "workdir": "runs/mteb/s0", "device": "auto",
          "model": {"block": "mteb"}, "data": {"workers": 0, "height": 64},
          "optim": {"lr": {"backbone": 0.001}}, "train": {"threads": 0, "iterations": 10}}


def write_run(folder: Path, name: str, seed: int, miou: float, abs_rel: float, delta: float | None,
              protocol=PROTOCOL, delta_se: float | None = None, dataset: str = "toycity@128x256",
              config: dict | None = None) -> Path:
    """A finished run folder: results.json (with a confusion matrix), config.yaml and scalars.csv."""
    folder.mkdir(parents=True)
    semseg = {"miou": miou, "pixel_acc": 90.0, **{f"iou_{c}": miou + i for i, c in enumerate(CLASSES)}}
    payload = {"name": name, "seed": seed, "dataset": dataset, "delta": delta, "delta_se": delta_se,
               "protocol": protocol, "results": {"semseg": semseg, "depth": {"abs_rel": abs_rel, "rmse": 4.0}},
               "details": {"semseg": {"confusion": [[5, 1, 0], [0, 4, 2], [1, 0, 9]], "class_names": CLASSES},
                           "depth": {}}}
    (folder / "results.json").write_text(json.dumps(payload))
    settings = {**(config or CONFIG), "name": name, "seed": seed, "workdir": str(folder)}
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    rows = ["step,tag,value,wall_time"] + [
        f"{step},{tag},{value + seed},{1000.0 + step}" for step in (1, 2, 3)
        for tag, value in (("train/total", 3.0 - step / 2), ("train/semseg/weighted", 2.0 - step / 3),
                           ("train/depth/weighted", 1.0 / step), ("val/semseg/miou", 10.0 * step),
                           ("val/depth/abs_rel", 0.5 / step), ("lr/model/backbone", 0.001))]
    (folder / "scalars.csv").write_text("\n".join(rows) + "\n")
    return folder


def run(args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["results.py", *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "scripts" / "results.py"), run_name="__main__")
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    return struct.unpack(">II", data[16:24])


def test_mean_and_std_over_seeds(tmp_path, monkeypatch, capsys):
    runs = [write_run(tmp_path / f"a{s}", "mteb", s, miou, 0.1 + s / 100, d)
            for s, miou, d in ((0, 80.0, 2.0), (1, 82.0, 4.0), (2, 84.0, 6.0))]
    runs.append(write_run(tmp_path / "b0", "none", 0, 70.0, 0.2, -1.0))
    monkeypatch.chdir(tmp_path)
    code, out, err = run([*runs, "--csv", tmp_path / "t.csv"], monkeypatch, capsys)
    assert code == 0 and err == ""
    assert "mteb (seeds 0,1,2)" in out and "82.0 ± 2.0" in out and "0.110 ± 0.010" in out
    assert "| 4.00 ± 2.00 |" in out and "| -1.00 ± 0.00 |" in out  # Δ_MTL: mean ± spread (no standard errors)
    assert "Per-class IoU" in out and "| 83.0 ± 2.0 |" in out  # iou_car = miou + 1
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0] == "name,seeds,task,metric,mean,std"
    assert "mteb,0 1 2,semseg,miou,82.0,2.0" in rows and "mteb,0 1 2,all,delta,4.0,2.0" in rows
    assert not list(tmp_path.glob("*.png"))  # no plots without --md or --plots


def test_markdown_file_equals_the_printed_tables(tmp_path, monkeypatch, capsys):
    runs = [write_run(tmp_path / f"a{s}", "mteb", s, 80.0 + s, 0.1, None) for s in (0, 1)]
    code, out, _ = run([*runs, "--md", tmp_path / "tables" / "t.md"], monkeypatch, capsys)
    assert code == 0
    assert (tmp_path / "tables" / "t.md").read_text().strip() == out.strip()
    assert "Δ_MTL" not in out


def test_delta_uncertainty_combines_seed_spread_and_standard_errors(tmp_path, monkeypatch, capsys):
    runs = [write_run(tmp_path / "a0", "mteb", 0, 80.0, 0.1, 1.0, delta_se=1.0),
            write_run(tmp_path / "a1", "mteb", 1, 80.0, 0.1, 3.0, delta_se=2.0)]
    code, out, _ = run(runs, monkeypatch, capsys)
    expected = math.sqrt(2.0 + (1.0 + 4.0) / 2)  # std over seeds² + mean standard error²
    assert code == 0 and f"| 2.00 ± {expected:.2f} |" in out
    assert "Δ_MTL: mean over seeds ± sqrt(std over seeds² + mean over seeds of each run's standard error²)" in out


def test_mismatched_protocols_are_refused(tmp_path, monkeypatch, capsys):
    a = write_run(tmp_path / "a", "x", 0, 80.0, 0.1, None)
    b = write_run(tmp_path / "b", "x", 1, 81.0, 0.1, None, {**PROTOCOL, "depth": "depth: median scaling"})
    code, _, err = run([a, b], monkeypatch, capsys)
    assert code == 2 and "different depth protocols" in err


def test_different_data_sets_are_refused(tmp_path, monkeypatch, capsys):
    a = write_run(tmp_path / "a", "x", 0, 80.0, 0.1, None)
    b = write_run(tmp_path / "b", "x", 1, 81.0, 0.1, None, dataset="toycity@64x128")
    code, _, err = run([a, b], monkeypatch, capsys)
    assert code == 2 and "different data sets" in err and "Traceback" not in err


def test_repeated_seed_is_refused_naming_the_run_folders(tmp_path, monkeypatch, capsys):
    a = write_run(tmp_path / "first" / "s0", "x", 0, 80.0, 0.1, None)
    b = write_run(tmp_path / "again" / "s0", "x", 0, 81.0, 0.1, None)
    code, out, err = run([a, b], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1
    assert "seed 0 more than once" in lines[0] and str(a) in lines[0] and str(b) in lines[0]


def test_config_differences_warn_one_line_per_key(tmp_path, monkeypatch, capsys):
    other = {**CONFIG, "device": "cpu", "data": {"workers": 4, "height": 64}, "train": {"threads": 2, "iterations": 10},
             "optim": {"lr": {"backbone": 0.01}}, "model": {"block": "none"}}
    a = write_run(tmp_path / "a", "x", 0, 80.0, 0.1, None)
    b = write_run(tmp_path / "b", "x", 1, 81.0, 0.1, None, config=other)
    code, _, err = run([a, b], monkeypatch, capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert code == 0 and len(warnings) == 2, err
    assert "model.block" in warnings[0] and '"mteb" in ' + str(a) in warnings[0] and str(b) in warnings[0]
    assert "optim.lr.backbone" in warnings[1]


def test_a_key_a_config_lacks_counts_as_its_default(tmp_path, monkeypatch, capsys):
    """A run made before a config key existed is the same experiment as one that sets the key's default."""
    with_default = {**CONFIG, "uda": {"target_bn_statistics": False}}
    with_other = {**CONFIG, "uda": {"target_bn_statistics": True}}
    old = write_run(tmp_path / "old", "x", 0, 80.0, 0.1, None)
    new = write_run(tmp_path / "new", "x", 1, 81.0, 0.1, None, config=with_default)
    code, _, err = run([old, new], monkeypatch, capsys)
    assert code == 0 and "warning" not in err, err
    other = write_run(tmp_path / "other", "x", 2, 81.0, 0.1, None, config=with_other)
    code, _, err = run([old, other], monkeypatch, capsys)
    assert code == 0 and f"uda.target_bn_statistics: false in {old}; true in {other}" in err, err


def test_plots_are_written_next_to_the_markdown(tmp_path, monkeypatch, capsys):
    runs = [write_run(tmp_path / f"a{s}", "mteb", s, 80.0 + s, 0.1, None) for s in (0, 1)]
    runs += [write_run(tmp_path / f"b{s}", "none", s, 70.0 + s, 0.2, None) for s in (0, 1)]
    out_dir = tmp_path / "tables"
    code, out, _ = run([*runs, "--md", out_dir / "t.md"], monkeypatch, capsys)
    assert code == 0
    shown = {(task, metric) for task, metric, _, _ in columns(["depth", "semseg"])}
    tags = 3 + len(shown & {("semseg", "miou"), ("depth", "abs_rel")})  # 3 losses, then logged table metrics
    width, height = plots.CURVE_PANEL_PX
    assert png_size(out_dir / "curves.png") == (3 * width, math.ceil(tags / 3) * height)
    assert png_size(out_dir / "iou.png") == plots.IOU_BARS_PX
    for name in ("mteb", "none"):
        assert png_size(out_dir / f"confusion_{name}.png") == plots.confusion_matrix_size(len(CLASSES))
    assert "![curves](curves.png)" in out and "![iou](iou.png)" in out


def test_plots_folder_can_be_chosen(tmp_path, monkeypatch, capsys):
    runs = [write_run(tmp_path / f"a{s}", "my run/1", s, 80.0 + s, 0.1, None) for s in (0, 1)]
    code, _, _ = run([*runs, "--plots", tmp_path / "figures"], monkeypatch, capsys)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "confusion_my_run_1.png", "curves.png", "iou.png"]


def test_evaluation_stems_get_no_training_curves(tmp_path, monkeypatch, capsys):
    runs = [write_run(tmp_path / f"a{s}", "x", s, 80.0 + s, 0.1, None) for s in (0, 1)]
    for folder in runs:
        (folder / "results.json").rename(folder / "eval-last-adabn8.json")
    code, out, _ = run([*runs, "--stem", "eval-last-adabn8", "--plots", tmp_path / "figures"], monkeypatch, capsys)
    assert code == 0 and "| x (seeds 0,1) |" in out
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["confusion_x.png", "iou.png"]
    files = [folder / "eval-last-adabn8.json" for folder in runs]  # the files themselves, with the default stem
    assert run([*files, "--plots", tmp_path / "direct"], monkeypatch, capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "direct").iterdir()) == ["confusion_x.png", "iou.png"]
