"""The scenario registry: scenario classes by ``ExperimentConfig.scenario`` name."""

from __future__ import annotations

import importlib

from mtlda.registry import Registry

SCENARIOS: Registry[type] = Registry("scenario")
BUILT_IN = ("mtlda.scenarios.supervised", "mtlda.scenarios.uda", "mtlda.scenarios.sde")


def register_scenario(name: str):
    """Class decorator registering a :class:`~mtlda.scenarios.dense.DenseScenario` subclass under ``name``."""

    def add(cls: type) -> type:
        cls.name = name
        SCENARIOS.add(name, cls)
        return cls

    return add


def scenario_class(name: str) -> type:
    """The scenario class named by ``ExperimentConfig.scenario`` (the built-in ones are imported on first use)."""
    for module in BUILT_IN:
        importlib.import_module(module)
    return SCENARIOS.get(name)


def scenario_names() -> tuple[str, ...]:
    for module in BUILT_IN:
        importlib.import_module(module)
    return SCENARIOS.names()
