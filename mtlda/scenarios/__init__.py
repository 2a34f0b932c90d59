"""Training scenarios (supervised, uda, sde) on one engine."""

from __future__ import annotations

import importlib

_SCENARIOS = {
    "supervised": ("mtlda.scenarios.supervised", "SupervisedScenario"),
    "uda": ("mtlda.scenarios.uda", "UDAScenario"),
    "sde": ("mtlda.scenarios.sde", "SDEScenario"),
}


def scenario_class(name: str):
    """The scenario class named by ``ExperimentConfig.scenario``."""
    if name not in _SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(_SCENARIOS)}, got {name!r}")
    module, cls = _SCENARIOS[name]
    return getattr(importlib.import_module(module), cls)
