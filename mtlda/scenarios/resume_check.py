"""Resuming only the same experiment: the differences between a checkpoint's config and the new one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtlda.config import load_config, to_dict
from mtlda.references import RUN_ONLY_KEYS
from mtlda.scenarios.checkpoint import CheckpointError

# Keys a resumed run may change freely: the run-only keys but the seed, which orders the data of every iteration.
RESUME_FREE_KEYS = tuple(key for key in RUN_ONLY_KEYS if key != "seed")


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not path.endswith("weighting"):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _resume_free(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_FREE_KEYS)


def config_changes(stored: Mapping[str, Any], cfg: Any) -> dict[str, tuple[Any, Any]]:
    """key -> (checkpoint value, new value) for every experiment setting that differs (run-only keys such as the
    work folder, device, threads and loader workers excluded; the seed included)."""
    before = _flatten(to_dict(load_config(None, (), stored=stored)))
    after = _flatten(to_dict(cfg))
    return {key: (before.get(key), after.get(key)) for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key) and not _resume_free(key)}


def check_resume_config(stored: Mapping[str, Any], cfg: Any, allowed: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """The allowed changes; an error naming every other changed key (and how to allow it)."""
    changes = config_changes(stored, cfg)
    allow = lambda key: any(key == a or key.startswith(a + ".") for a in allowed)  # noqa: E731
    refused = {k: v for k, v in changes.items() if not allow(k)}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(refused.items())[:6])
        more = f" (and {len(refused) - 6} more)" if len(refused) > 6 else ""
        raise CheckpointError(
            f"--resume with a changed config would continue a different experiment: {listed}{more}; undo the "
            f"change, or continue with it explicitly: --allow-changed {' '.join(refused)}"
        )
    return changes
