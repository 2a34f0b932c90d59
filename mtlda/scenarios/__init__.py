"""Training scenarios (supervised, uda, sde) on one engine; looked up by name in a registry."""

from mtlda.scenarios.registry import SCENARIOS, register_scenario, scenario_class, scenario_names

__all__ = ["SCENARIOS", "register_scenario", "scenario_class", "scenario_names"]
