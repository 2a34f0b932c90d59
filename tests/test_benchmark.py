"""scripts/benchmark.py: the xTAM cases run in-process at quick size and write a JSON report and a Markdown table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_quick_xtam_cases_write_a_report(benchmark, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        code = benchmark.main(
            ["--quick", "--threads", "1", "--configs", "xtam_sdpa", "xtam_explicit", "--out", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    report = json.loads(out.read_text())
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["cpu_count"]
    results = {r["name"]: r for r in report["results"]}
    assert list(results) == ["xtam_sdpa", "xtam_explicit"]
    for result in results.values():
        assert result["status"] == "ok" and result["ms_per_iter"] > 0 and result["parameters"] == 369_920
        assert result["shape"] == "2x128x32x64 (128 tokens)"
    table = capsys.readouterr().out
    assert "| xtam_sdpa |" in table and "| xtam_explicit |" in table


def test_bad_arguments_exit_with_a_clear_message(benchmark, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        benchmark.parse_args(["--configs", "nope"])
    assert info.value.code == 2
    assert "unknown config(s) nope" in capsys.readouterr().err
