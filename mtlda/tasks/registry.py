"""The task registry: task classes by name, their codes (S, D, N, E, ...), and task objects from a config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtlda.data.targets import register_target, target_names
from mtlda.errors import UserInputError
from mtlda.registry import Registry
from mtlda.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` available by its ``name`` (and by its ``code`` in ``tasks.names``), and declare
    its target's kind to the data layer (augmentation treats the target by it)."""
    TASKS.add(cls.name, cls)
    if cls.target_kind is not None and cls.name not in target_names():
        register_target(cls.name, cls.target_kind)
    return cls


def task_codes() -> dict[str, str]:
    """Code -> task name of every selectable task (those with a code), e.g. ``{"S": "semseg", ...}``."""
    return {cls.code: name for name, cls in TASKS.items() if cls.code}


def check_codes(codes: Sequence[str]) -> list[str]:
    """The task names of ``codes`` in sorted-name order; empty, unknown, lower-case or repeated codes are errors."""
    known = task_codes()
    if not codes:
        raise UserInputError(f"no task given: tasks.names needs one or more of {', '.join(known)}")
    unknown = [c for c in codes if c not in known]
    if unknown:
        upper = [c for c in unknown if isinstance(c, str) and c.upper() in known]
        hint = f" (codes are upper case: {', '.join(c.upper() for c in upper)})" if upper else ""
        raise UserInputError(f"unknown task code(s) {unknown}{hint}; use some of {', '.join(known)}")
    if len(set(codes)) != len(codes):
        raise UserInputError(f"task codes must not repeat, got {list(codes)}")
    return sorted(known[c] for c in codes)


def build_tasks(cfg: Any, info: Any, names: Sequence[str] | None = None) -> dict[str, Task]:
    """Task objects keyed by name in sorted order: the tasks of ``cfg.tasks.names`` (or the given ``names``) on
    the data set ``info``."""
    names = check_codes(list(cfg.tasks.names)) if names is None else sorted(names)
    return {name: TASKS.get(name).from_config(cfg, info) for name in names}
