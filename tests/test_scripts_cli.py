"""Scripts: bad input exits with code 2 and one clear line on stderr, no traceback, nothing damaged."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args: str, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


@pytest.mark.parametrize(
    "script, args, expected",
    [
        ("supervised.py", ["--config", "nope.yaml"], "config file not found: nope.yaml"),
        ("supervised.py", ["--set", "model.backbon=resnet34"], "did you mean model.backbone"),
        ("supervised.py", ["--set", "train.iterations=many"], "train.iterations: expected int"),
        ("supervised.py", ["--dataset", "cityscapes", "--tasks", "S,D"], "CITYSCAPES_DIR"),
        ("supervised.py", ["--tasks", "S,E"], "no experiment supervised/toycity/se_mteb.yaml"),
        ("uda.py", ["--src", "vkitti2", "--tgt", "toycity"], "no experiments for vkitti2 -> toycity"),
        ("evaluate.py", ["missing.pt"], "checkpoint not found: missing.pt"),
        ("results.py", ["no-such-run"], "no-such-run not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(script, args, expected, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("CITYSCAPES_DIR", raising=False)
    monkeypatch.delenv("MTLDA_DEBUG", raising=False)
    monkeypatch.chdir(ROOT)
    code, _, err = run_script(script, *args, "--workdir", str(tmp_path / "w"), monkeypatch=monkeypatch,
                              capsys=capsys) if script in ("supervised.py", "uda.py") else run_script(
        script, *args, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and expected in lines[-1], err
    assert "Traceback" not in err


def test_resume_without_checkpoint_keeps_folder_intact(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me")
    code, _, err = run_script("supervised.py", "--resume", "--workdir", str(workdir), "--set",
                              f"data.toycity.cache_dir={tmp_path / 'cache'}", "--set", "data.toycity.num_train=8",
                              "--set", "data.toycity.num_val=4", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "no " in err and "last.pt" in err
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_real_process_prints_help_and_config():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "scripts/supervised.py", "--print-config", "--set", "seed=5"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "seed: 5" in done.stdout and "workdir: runs/toycity_sdn_mteb/s5" in done.stdout
