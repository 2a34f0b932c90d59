"""Packaging: the wheel holds the experiments, the references, the split files and the ``mtlda`` entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a wheel is built from (a copy, so that the build leaves the checkout alone).
SOURCES = ("mtlda", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Iterator[zipfile.ZipFile]:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(out)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("mtlda-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


@pytest.mark.slow
def test_wheel_holds_every_experiment_and_split_file(wheel):
    names = set(wheel.namelist())
    package = ROOT / "mtlda"
    expected = sorted(p.relative_to(ROOT).as_posix() for p in (package / "experiments").rglob("*.yaml"))
    expected += sorted(p.relative_to(ROOT).as_posix() for p in (package / "data" / "splits").iterdir())
    assert "mtlda/experiments/references.yaml" in expected
    assert any("/_base_/" in name for name in expected)
    assert [name for name in expected if name not in names] == []
    assert {"mtlda/__main__.py", "mtlda/commands/__init__.py", "mtlda/commands/results.py",
            "mtlda/commands/export_weights.py"} <= names


@pytest.mark.slow
def test_wheel_declares_the_console_script_and_matplotlib(wheel):
    info = next(name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt"))
    entry_points = wheel.read(info).decode()
    assert "[console_scripts]" in entry_points and "mtlda = mtlda.commands:run" in entry_points
    metadata = wheel.read(info.replace("entry_points.txt", "METADATA")).decode()
    assert "Requires-Dist: matplotlib>=3.7" in metadata
