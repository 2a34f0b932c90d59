"""scripts/results.py: runs aggregated over seeds into mean ± std, mismatched protocols refused."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = {"semseg": "semseg: 9 classes", "depth": "depth: per-pixel"}


def write_run(folder: Path, name: str, seed: int, miou: float, abs_rel: float, delta: float | None,
              protocol=PROTOCOL) -> Path:
    folder.mkdir(parents=True)
    payload = {"name": name, "seed": seed, "dataset": "toycity@128x256", "delta": delta, "protocol": protocol,
               "results": {"semseg": {"miou": miou, "pixel_acc": 90.0}, "depth": {"abs_rel": abs_rel, "rmse": 4.0}}}
    (folder / "results.json").write_text(json.dumps(payload))
    return folder


def run(args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["results.py", *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "scripts" / "results.py"), run_name="__main__")
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def test_mean_and_std_over_seeds(tmp_path, monkeypatch, capsys):
    runs = [write_run(tmp_path / f"a{s}", "mteb", s, miou, 0.1 + s / 100, d)
            for s, miou, d in ((0, 80.0, 2.0), (1, 82.0, 4.0), (2, 84.0, 6.0))]
    runs.append(write_run(tmp_path / "b0", "none", 0, 70.0, 0.2, -1.0))
    code, out, _ = run([*runs, "--csv", tmp_path / "t.csv", "--md", tmp_path / "t.md"], monkeypatch, capsys)
    assert code == 0
    assert "mteb (seeds 0,1,2)" in out and "82.0 ± 2.0" in out and "0.110 ± 0.010" in out
    assert "| 4.000 |" in out  # mean delta
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert "mteb,0 1 2,semseg,miou,82.0,2.0" in rows and "mteb,0 1 2,all,delta,4.0," in rows
    assert (tmp_path / "t.md").read_text().strip() == out.strip()


def test_mismatched_protocols_are_refused(tmp_path, monkeypatch, capsys):
    a = write_run(tmp_path / "a", "x", 0, 80.0, 0.1, None)
    b = write_run(tmp_path / "b", "x", 1, 81.0, 0.1, None, {**PROTOCOL, "depth": "depth: median scaling"})
    code, _, err = run([a, b], monkeypatch, capsys)
    assert code == 2 and "different depth protocols" in err
