"""Single-task references: the numbers the multi-task delta Delta_MTL is measured against.

A reference is an experiment: it is keyed by everything that makes it a different experiment (scenario, data set,
class count, evaluation resolution, the UDA setting, the reference family ``references.kind``, the task and its
metric's protocol) and holds one result per seed, so it carries its mean, standard deviation and seed count. Only
experiments that declare themselves references (``references.is_reference: true``) record, and only when asked
(``--record-reference``); a seed is added or replaced only by the same experiment with the same settings (the
config fingerprint), so a run never silently replaces another experiment's reference.

The file (``references.file``; empty: the one shipped in the package, ``mtlda/experiments/references.yaml``) is
found the same way from any working folder. Format (version 2)::

    version: 2
    entries:
    - key: {scenario: supervised, dataset: toycity-flat, classes: 9, resolution: 128x256, setting: '', kind: stl}
      task: semseg
      protocol: 'semseg: 9 classes, ...'
      experiment: toycity_s_stl
      fingerprint: 3f2a...
      iterations: 150
      seeds: {0: {miou: 87.0, ...}, 1: {...}}
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from mtlda.config import to_dict
from mtlda.errors import MtldaError, UserInputError
from mtlda.files import write_text_atomic
from mtlda.metrics import delta_uncertainty, multitask_delta

REFERENCES_VERSION = 2
PACKAGED_REFERENCES = Path(__file__).resolve().parent / "experiments" / "references.yaml"
# Config keys that do not change an experiment (where and how fast it runs), left out of its fingerprint.
RUN_ONLY_KEYS = ("seed", "workdir", "device", "references", "train.threads", "data.workers", "train.show_progress")

Results = Mapping[str, Mapping[str, float]]


class ReferenceError(MtldaError, ValueError):
    """A references file that cannot be read, or a recording that would replace another experiment's numbers."""


@dataclass(frozen=True)
class ReferenceKey:
    """What makes single-task numbers comparable with a run (the task and its protocol come on top)."""

    scenario: str
    dataset: str
    classes: int
    resolution: str
    setting: str
    kind: str

    def describe(self) -> str:
        setting = f", {self.setting}" if self.setting else ""
        return f"{self.kind} references, {self.scenario}, {self.dataset} ({self.classes} classes) at {self.resolution}{setting}"


@dataclass
class Reference:
    """One task's recorded single-task results, one per seed."""

    task: str
    protocol: str
    experiment: str
    iterations: int
    seeds: dict[int, dict[str, float]]

    @property
    def count(self) -> int:
        return len(self.seeds)

    def _values(self) -> dict[str, list[float]]:
        names = set.intersection(*(set(v) for v in self.seeds.values())) if self.seeds else set()
        return {name: [self.seeds[s][name] for s in sorted(self.seeds)] for name in sorted(names)}

    def mean(self) -> dict[str, float]:
        return {name: statistics.fmean(v) for name, v in self._values().items()}

    def std(self) -> dict[str, float]:
        """Sample standard deviation over seeds (0 for one seed)."""
        return {name: statistics.stdev(v) if len(v) > 1 else 0.0 for name, v in self._values().items()}

    def standard_error(self) -> dict[str, float]:
        """Standard error of the mean over seeds: std / sqrt(n) (0 for one seed)."""
        return {name: value / math.sqrt(self.count) for name, value in self.std().items()}


def config_fingerprint(cfg: Any) -> str:
    """A short hash of the resolved config without the keys that only say where and how fast a run goes."""
    data = to_dict(cfg)
    for dotted in RUN_ONLY_KEYS:
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def references_path(cfg: Any) -> Path:
    """The references file of a config: ``references.file`` (absolute, or relative to the working folder) or the
    packaged one."""
    return Path(cfg.references.file).expanduser() if cfg.references.file else PACKAGED_REFERENCES


def read_entries(path: Path) -> list[dict]:
    """The entries of a references file (empty when the file does not exist)."""
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ReferenceError(f"{path} is not valid YAML ({str(err).splitlines()[0]}); fix or delete it") from None
    if not isinstance(data, dict) or data.get("version") != REFERENCES_VERSION or not isinstance(
            data.get("entries"), list):
        raise ReferenceError(
            f"{path} is not a version-{REFERENCES_VERSION} references file (keys 'version: {REFERENCES_VERSION}' "
            "and 'entries: [...]'); re-record the single-task references with --record-reference"
        )
    return data["entries"]


def _reference(entry: Mapping[str, Any]) -> Reference:
    seeds = {int(s): {k: float(v) for k, v in m.items()} for s, m in (entry.get("seeds") or {}).items()}
    return Reference(entry["task"], entry["protocol"], entry.get("experiment", "?"), int(entry.get("iterations", 0)),
                     seeds)


def lookup(path: Path, key: ReferenceKey, task: str, protocol: str) -> Reference | None:
    """The reference of ``task`` under ``key``; None when none is recorded; an error when one is recorded under a
    different protocol (its numbers were measured another way)."""
    candidates = [e for e in read_entries(path) if e.get("key") == asdict(key) and e.get("task") == task]
    matching = [e for e in candidates if e.get("protocol") == protocol]
    if matching:
        return _reference(matching[-1])
    if candidates:
        raise ReferenceError(
            f"the {task} reference ({key.describe()}) in {path} was recorded under the protocol "
            f"{candidates[-1].get('protocol')!r}, but this run evaluates with {protocol!r}; re-record the reference "
            "under this protocol"
        )
    return None


def record(path: Path, key: ReferenceKey, task: str, protocol: str, seed: int, metrics: Mapping[str, float],
           experiment: str, fingerprint: str, iterations: int) -> Reference:
    """Add (or replace) ``seed``'s metrics of ``task`` in the entry of ``key``, written atomically.

    Refuses when the entry belongs to another experiment or was recorded with other settings (fingerprint)."""
    data_entries = read_entries(path)
    entry = next((e for e in data_entries if e.get("key") == asdict(key) and e.get("task") == task
                  and e.get("protocol") == protocol), None)
    if entry is None:
        entry = {"key": asdict(key), "task": task, "protocol": protocol, "experiment": experiment,
                 "fingerprint": fingerprint, "iterations": iterations, "seeds": {}}
        data_entries.append(entry)
    elif entry.get("experiment") != experiment or entry.get("fingerprint") != fingerprint:
        raise ReferenceError(
            f"the {task} reference ({key.describe()}) in {path} was recorded by experiment "
            f"{entry.get('experiment')!r} with other settings (fingerprint {entry.get('fingerprint')} vs "
            f"{fingerprint}); not replacing it: remove that entry from the file, or record into another file "
            "with --set references.file=PATH"
        )
    entry["seeds"][int(seed)] = {k: float(v) for k, v in sorted(metrics.items())}
    entry["seeds"] = dict(sorted(entry["seeds"].items()))
    entry["date"] = datetime.date.today().isoformat()
    text = yaml.safe_dump({"version": REFERENCES_VERSION, "entries": data_entries}, sort_keys=False)
    write_text_atomic(path, text)
    return _reference(entry)


def delta_directions(tasks: Mapping[str, Any]) -> dict[str, dict[str, bool]]:
    """Per task, the metric that enters the multi-task delta (its main metric, as in the paper) and whether higher
    is better: the ``higher_is_better`` argument of :func:`mtlda.metrics.multitask_delta`."""
    return {name: {t.main_metric: t.higher_is_better[t.main_metric]} for name, t in sorted(tasks.items())}


def refuse_unless_reference(cfg: Any) -> None:
    """UserInputError unless ``cfg`` may record references (checked before training, and again when recording)."""
    if not cfg.references.is_reference:
        raise UserInputError(
            f"{cfg.name} is not a reference experiment (references.is_reference is false): only the "
            "single-task experiments that declare themselves references can record, so that no ordinary run "
            "replaces a reference"
        )


class ReferenceBook:
    """The references of one run: its key, lookups per task, its delta and, for reference experiments, recording."""

    def __init__(self, cfg: Any, key: ReferenceKey, tasks: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.key = key
        self.tasks = dict(sorted(tasks.items()))
        self.path = references_path(cfg)
        self.protocol = {name: task.protocol_description() for name, task in self.tasks.items()}

    @property
    def multitask(self) -> bool:
        """Whether a multi-task delta applies: two or more tasks selectable by code."""
        return len(self.tasks) > 1 and all(task.code for task in self.tasks.values())

    def references(self) -> dict[str, Reference]:
        """task -> recorded reference, for the tasks that have one."""
        found = {name: lookup(self.path, self.key, name, self.protocol[name]) for name in self.tasks}
        return {name: ref for name, ref in found.items() if ref is not None}

    def delta(self, results: Results) -> tuple[float, float] | None:
        """(Delta_MTL %, its standard error from the references' seeds), or None without a full set of references."""
        if not self.multitask:
            return None
        refs = self.references()
        if set(refs) != set(self.tasks):
            return None
        means = {name: ref.mean() for name, ref in refs.items()}
        errors = {name: ref.standard_error() for name, ref in refs.items()}
        directions = delta_directions(self.tasks)
        return multitask_delta(results, means, directions), delta_uncertainty(results, means, errors, directions)

    def budget_warning(self, iterations: int) -> str | None:
        """A warning when the references of this multi-task run were trained for another number of iterations than
        ``iterations`` (its delta would compare different training budgets); None when they match or are missing."""
        refs = self.references() if self.multitask else {}
        other = sorted({ref.iterations for ref in refs.values() if ref.iterations != iterations})
        if not other:
            return None
        return (f"warning: the single-task references were trained for {'/'.join(map(str, other))} iterations, "
                f"this run for {iterations}: its Δ_MTL compares different training budgets (re-record the "
                "references at this budget)")

    def record(self, results: Results, iterations: int) -> list[Reference]:
        """Store this single-task reference run's metrics (this seed) in the references file."""
        refuse_unless_reference(self.cfg)
        if len(self.tasks) != 1 or not all(t.code for t in self.tasks.values()):
            raise UserInputError(f"a reference experiment trains one task, {self.cfg.name} has {sorted(self.tasks)}")
        fingerprint = config_fingerprint(self.cfg)
        return [record(self.path, self.key, name, self.protocol[name], self.cfg.seed, results[name], self.cfg.name,
                       fingerprint, iterations) for name in self.tasks]
