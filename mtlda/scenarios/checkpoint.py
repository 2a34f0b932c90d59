"""Checkpoint files: atomic writes, safe loading, the random-number-generator state they carry, provenance.

A checkpoint holds only tensors, numbers, strings and plain containers and is loaded with
``torch.load(weights_only=True)``: a checkpoint is data, never code. A file that needs anything else (a pickled
callable, a NumPy array) is refused with a message saying why and what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import pickle
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtlda
from mtlda.errors import MtldaError
from mtlda.files import atomic_writer

CHECKPOINT_FORMAT = "mtlda-checkpoint"
CHECKPOINT_VERSION = 2


class CheckpointError(MtldaError, ValueError):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the model."""


def rng_state() -> dict[str, Any]:
    """Every RNG state a run depends on (Python, NumPy, torch CPU and CUDA) as plain data and tensors."""
    key, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {"key": key, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["key"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block (validation, image panels, baselines) without touching the training RNG streams: every state
    is restored afterwards, so a run resumed from any checkpoint equals the uninterrupted one."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=1)
def source_commit() -> str:
    """The git commit of the mtlda source tree when it is a git checkout (with ``+dirty`` for local changes)."""
    root = Path(mtlda.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return ""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit + ("+dirty" if dirty else "")


def provenance() -> dict[str, str]:
    """Where a checkpoint comes from: the mtlda version, its git commit (when known) and the time it was written."""
    return {"mtlda_version": mtlda.__version__, "git_commit": source_commit(),
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` of a checkpoint dict (with its format tag and provenance added) through a temporary file in
    the same folder, fsynced, then renamed over ``path``: a crash or a full disk never harms the previous file."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **provenance(), **obj}
    with atomic_writer(path) as handle:
        torch.save(payload, handle)


def _reason(err: BaseException) -> str:
    """The first sentence of what went wrong in ``torch.load`` (the weights-only unpickler's own error)."""
    cause = err.__context__ if isinstance(err, pickle.UnpicklingError) and err.__context__ else err
    text = str(cause).strip()
    return text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (or any weights-only file with a ``modules`` entry)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (pass the last.pt or best.pt of a run, or a weights file "
                              "written by mtlda export-weights)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err):
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects other than tensors, numbers, strings and "
                f"containers ({_reason(err)}); loading it could run code. mtlda checkpoints never do: re-save a "
                "trusted file's tensors with torch.save(state_dict) or retrain"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path} ({_reason(err)}): it is truncated or not a PyTorch "
                              "file; use another checkpoint (best.pt, last.pt) or retrain") from None
    if not isinstance(ckpt, dict) or "modules" not in ckpt:
        raise CheckpointError(f"{path} is not an mtlda checkpoint (no 'modules' entry): pass a checkpoint written by "
                              "mtlda (last.pt, best.pt, mtlda export-weights) or convert published weights with "
                              "mtlda import-weights")
    return ckpt


def state_mismatch(err: RuntimeError) -> str:
    """What ``load_state_dict`` found wrong (its first missing, unexpected or mis-shaped keys), in one short line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    detail = lines[1] if len(lines) > 1 else lines[0]
    return detail if len(detail) <= 160 else detail[:157] + "..."


def weights_only(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The part of a checkpoint needed for inference: the model weights, the config and the metadata."""
    keep = ("format", "format_version", "mtlda_version", "git_commit", "written", "iteration", "config", "metadata")
    return {**{k: ckpt[k] for k in keep if k in ckpt}, "modules": {"model": ckpt["modules"]["model"]}}
