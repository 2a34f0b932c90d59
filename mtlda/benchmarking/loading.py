"""Data loading: images/s of the training loader per worker count against the training step's own rate."""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mtlda.benchmarking.cases import Case, build_case
from mtlda.benchmarking.measure import load_average, timed
from mtlda.benchmarking.plan import DEMO_SIZE, QUICK_SIZE, VARIANTS, Comparison
from mtlda.data.batch import collate
from mtlda.data.sampling import infinite_batches


def loader_rates(split: Dataset, batch: int, workers: Sequence[int], pin: bool, batches: int, rounds: int
                 ) -> list[dict[str, Any]]:
    """images/s of the training loader (``infinite_batches``) per worker count, and the latency of its first
    batch (an epoch's start), in interleaved blocks with a fresh loader each."""
    results: dict[int, dict[str, list[float]]] = {w: {"first": [], "rate": []} for w in workers}
    for _ in range(rounds):
        for count in workers:
            start = time.perf_counter()
            loader = infinite_batches(split, batch, 0, 0, collate, workers=count, pin_memory=pin)
            next(loader)
            first = time.perf_counter()
            for _ in range(batches):
                next(loader)
            done = time.perf_counter()
            loader.close()
            results[count]["first"].append(first - start)
            results[count]["rate"].append(batches * batch / (done - first))
    return [{"workers": count, "pin_memory": pin, "images_per_s": statistics.median(r["rate"]),
             "first_batch_s": statistics.median(r["first"])} for count, r in results.items()]


def run_steps(case: Case, count: int) -> None:
    for _ in range(count):
        case.step()


def step_rates(cases: Mapping[int, Case], steps: int, rounds: int, device: torch.device) -> list[dict[str, Any]]:
    """images/s of the training step, loading included, per ``data.workers``: interleaved blocks of ``steps``
    steps, each with a fresh loader (no batch is prefetched while another case runs)."""
    rates: dict[int, list[float]] = {w: [] for w in cases}
    for _ in range(rounds):
        for count, case in cases.items():
            case.batches = case.scenario.train_batches(case.engine.iteration)
            seconds = timed(functools.partial(run_steps, case, steps), device)
            case.batches.close()
            rates[count].append(steps * case.scenario.cfg.data.batch_size / seconds)
    base = statistics.median(next(iter(rates.values())))
    return [{"workers": count, "step_images_per_s": statistics.median(r), "speedup": statistics.median(r) / base,
             "all": r} for count, r in rates.items()]


def data_section(device: torch.device, quick: bool, workdir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Loader throughput per worker count against the training step's rate, to choose ``data.workers``."""
    load_before = load_average()
    size = QUICK_SIZE if quick else DEMO_SIZE
    comparison = Comparison("data", "demo", size, 2 if quick else 0, ("default",), 0, 1)
    workers = (0, 1) if quick else (0, 1, 2)
    batches, rounds, steps = (2, 1, 2) if quick else (8, 4, 3)
    cases = {w: build_case(comparison, VARIANTS["default"], device, workdir / f"workers{w}",
                           [*overrides, f"data.workers={w}"]) for w in workers}
    for case in cases.values():
        case.step()  # warm-up
    first = cases[workers[0]].scenario
    split, batch = first.train_split, first.cfg.data.batch_size
    loaders = loader_rates(split, batch, workers, False, batches, rounds)
    if device.type == "cuda":
        loaders += loader_rates(split, batch, workers, True, batches, rounds)
    steps_rows = step_rates(cases, steps, rounds, device)
    serial_step = steps_rows[0]["step_images_per_s"]
    for row in loaders:
        row["startup_s"] = max(row["first_batch_s"] - batch / row["images_per_s"], 0.0)
        row["startup_share_of_epoch"] = row["startup_s"] * serial_step / len(split)
    serial_loader = next(row for row in loaders if row["workers"] == 0)
    return {"title": f"data: toycity (cityscapes format) {size[0]}x{size[1]}, batch {batch}",
            "load_before": load_before, "load_after": load_average(), "cpu_count": os.cpu_count(),
            "loader": loaders, "train_step": steps_rows,
            "pin_memory": "measured" if device.type == "cuda" else "not measured: needs CUDA",
            "loading_share_of_serial_step": serial_step / serial_loader["images_per_s"]}
