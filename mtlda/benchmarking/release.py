"""The demo's whole training step in this source tree against an earlier revision's, from each tree's own code.

Each tree (this one, and revision REV exported with ``git archive``) runs its own ``scripts/supervised.py`` demo
in a fresh process for a short and a long number of iterations (one validation and one checkpoint at the end of
each). The difference of the two wall times divided by the difference of the iteration counts is one training step
with everything a user's run pays per step (data loading, normals, forward, losses, backward, optimiser, logging)
and nothing paid once (start-up, data generation, the final validation and checkpoint). The runs alternate between
the trees, round after round, so that a load change on a shared machine hits both: read the ratio.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtlda.benchmarking.measure import load_average
from mtlda.errors import UserInputError

SCRIPT = Path("scripts") / "supervised.py"
FULL_ITERATIONS = (5, 45)
QUICK_ITERATIONS = (1, 2)
HARNESS_KEYS = ("train.iterations", "train.val_every", "train.checkpoint_every", "train.image_every")
QUICK_OVERRIDES = ("data.height=32", "data.width=64", "data.toycity.height=32", "data.toycity.width=64",
                   "data.toycity.num_train=8", "data.toycity.num_val=4", "data.batch_size=2", "data.val_batch_size=4")


def source_tree(tree: Path | None = None) -> Path:
    """``tree``, or the source tree this package runs from: a git checkout holding ``scripts/supervised.py``."""
    tree = tree or Path(__file__).resolve().parents[2]
    if not (tree / SCRIPT).is_file() or not (tree / ".git").exists():
        raise UserInputError(f"--against needs mtlda run from its git checkout ({tree} has no {SCRIPT} or .git): "
                             "install it with pip install -e . from a clone")
    return tree


def export_revision(repo: Path, revision: str, destination: Path) -> str:
    """Write revision ``revision`` of the git repository ``repo`` into ``destination``; returns its commit hash."""
    resolved = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
                              capture_output=True, text=True)
    if resolved.returncode != 0:
        raise UserInputError(f"--against {revision}: not a commit of {repo} (give a commit hash, tag or branch, e.g. "
                             "HEAD~10; git log lists them)")
    commit = resolved.stdout.strip()
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode != 0:
        raise UserInputError(f"--against {revision}: git archive failed ({archive.stderr.decode().strip()}): check "
                             f"that {repo} is a readable git checkout")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    if not (destination / SCRIPT).is_file():
        raise UserInputError(f"--against {revision}: that revision has no {SCRIPT} to run its demo with (pick a later "
                             "one)")
    return commit


def timed_run(tree: Path, iterations: int, workdir: Path, options: Sequence[str]) -> dict[str, float]:
    """Wall seconds of one demo training run of ``iterations`` steps from ``tree``'s code (its own
    ``scripts/supervised.py`` with ``options``), and the peak resident MiB of its largest process (``wait4``'s
    ``ru_maxrss``: the demo's, or a loader worker's if larger). The run folder is removed afterwards; its log
    ``<workdir>.log`` stays."""
    settings = [f"train.iterations={iterations}", *(f"{key}={iterations}" for key in HARNESS_KEYS[1:])]
    command = [sys.executable, str(SCRIPT), "--workdir", str(workdir), "--seed", "0", *options]
    for setting in settings:
        command += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    log = workdir.with_suffix(".log")
    workdir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, which also gives its peak memory
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise UserInputError(f"the demo run of {tree} failed (exit {process.returncode}; log {log}): {tail}\n"
                             "An older revision may not know an option or --set key given to both trees: drop it, or "
                             "pick a later revision")
    shutil.rmtree(workdir)  # its checkpoints (about 1 GB for a ResNet-101) would fill the disk over the rounds
    return {"seconds": seconds, "largest_process_rss_mib": usage.ru_maxrss / 1024}


def step_seconds(short: float, long: float, short_iterations: int, long_iterations: int) -> float:
    """Seconds per training step from two runs that differ only in their number of steps."""
    return (long - short) / (long_iterations - short_iterations)


def release_comparison(revision: str, workdir: Path, quick: bool, rounds: int, overrides: Sequence[str] = (),
                       device: str = "cpu", threads: int = 0, tree: Path | None = None) -> dict[str, Any]:
    """The demo step of this source tree (or ``tree``, a git checkout) against its revision ``revision``'s, both with
    the config ``overrides`` (KEY=VALUE), on ``device`` with ``threads`` torch threads (0: torch's default), over
    ``rounds`` rounds (see the module docstring). Returns ``ms_per_step`` of each tree (the median over the rounds),
    ``ratio`` (current / reference), each round's runs and ratio, and the load average before and after."""
    harnessed = [o for o in overrides if o.split("=", 1)[0].strip() in HARNESS_KEYS]
    if harnessed:
        raise UserInputError(f"--set {harnessed[0]}: the release section sets {', '.join(HARNESS_KEYS)} itself (the "
                             "short and long runs); drop it")
    current = source_tree(tree)
    reference = workdir / "reference"
    commit = export_revision(current, revision, reference)
    short, long = QUICK_ITERATIONS if quick else FULL_ITERATIONS
    settings = [*(QUICK_OVERRIDES if quick else ()), *overrides, *([f"train.threads={threads}"] if threads else [])]
    options = ["--device", device, *(x for setting in settings for x in ("--set", setting))]
    trees = {"reference": reference, "current": current}
    load_before = load_average()
    for name, tree_path in trees.items():
        timed_run(tree_path, 1, workdir / "warmup" / name, options)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for index in range(rounds):
        order = list(trees.items()) if index % 2 == 0 else list(trees.items())[::-1]
        lengths = (short, long) if index % 2 == 0 else (long, short)
        for name, tree_path in order:
            timed = {n: timed_run(tree_path, n, workdir / f"r{index}" / f"{name}_{n}", options) for n in lengths}
            step = step_seconds(timed[short]["seconds"], timed[long]["seconds"], short, long)
            if step <= 0:
                raise UserInputError(f"the {long}-step run of {name} took no longer than its {short}-step run: the "
                                     "runs are too short for this machine's noise (run without --quick)")
            runs[name].append({"short_s": timed[short]["seconds"], "long_s": timed[long]["seconds"], "step_s": step,
                               "largest_process_rss_mib": timed[long]["largest_process_rss_mib"]})
    steps = {name: statistics.median(r["step_s"] for r in rs) for name, rs in runs.items()}
    ratios = [c["step_s"] / r["step_s"] for c, r in zip(runs["current"], runs["reference"])]
    return {"title": "release: the demo's training step, this tree against an earlier revision",
            "reference_revision": revision, "reference_commit": commit, "iterations": [short, long],
            "device": device, "threads": threads, "overrides": settings, "rounds": runs,
            "ms_per_step": {k: 1000 * v for k, v in steps.items()}, "ratio": steps["current"] / steps["reference"],
            "round_ratios": ratios, "load_before": load_before, "load_after": load_average()}
