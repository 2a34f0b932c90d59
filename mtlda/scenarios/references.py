"""Single-task reference numbers of a data set and the multi-task delta against them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mtlda.data.registry import DatasetInfo
from mtlda.metrics import load_references, multitask_delta, save_references
from mtlda.scenarios.common import input_size
from mtlda.schema import ExperimentConfig
from mtlda.tasks import Task, delta_directions, metric_protocols


class ReferenceBook:
    """The references file of ``cfg.references`` seen from one data set, resolution and set of tasks.

    Entries are keyed by data set (with its evaluation resolution and a ``context`` such as the UDA source),
    task and the metric's protocol text, so a delta is only ever formed against numbers measured the same way.
    """

    def __init__(self, cfg: ExperimentConfig, info: DatasetInfo, tasks: Mapping[str, Task], context: str = "") -> None:
        h, w = input_size(cfg.data, train=False)
        self.path = Path(cfg.references)
        self.dataset = f"{info.name}@{h}x{w}" + (f" ({context})" if context else "")
        self.tasks = dict(tasks)
        self.protocol = metric_protocols(self.tasks)
        self.source = f"{cfg.name} (seed {cfg.seed})"

    @property
    def multitask(self) -> bool:
        """Whether a multi-task delta applies: two or more supervised-style tasks (each with a task code)."""
        return len(self.tasks) > 1 and all(task.code for task in self.tasks.values())

    def references(self) -> dict[str, dict[str, float]]:
        """task -> metric -> reference value for the tasks that have one (empty without a file)."""
        if not self.path.is_file():
            return {}
        return load_references(self.path, self.dataset, self.protocol)

    def delta(self, results: Mapping[str, Mapping[str, float]]) -> float | None:
        """The paper's multi-task delta (%), or None for one task or when a reference is missing."""
        if not self.multitask:
            return None
        refs = self.references()
        if any(name not in refs for name in self.tasks):
            return None
        return multitask_delta(results, refs, delta_directions(self.tasks))

    def record(self, results: Mapping[str, Mapping[str, float]]) -> None:
        """Store a single-task run's metrics as the reference of its task."""
        save_references(self.path, self.dataset, self.protocol, results, self.source)
