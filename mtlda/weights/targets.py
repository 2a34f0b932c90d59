"""The mtlda modules an experiment's checkpoint holds, built by its scenario from the config alone (no data set is
read): the network with the scenario's heads and, for ``sde``, the pose net."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtlda.models.network import MultiTaskNet
from mtlda.scenarios.dense import DenseScenario
from mtlda.scenarios.engine import Engine
from mtlda.scenarios.registry import scenario_class
from mtlda.schema import ExperimentConfig

# Checkpoint modules that hold trained weights an import can provide (discriminators and weighting state are
# training-only).
WEIGHT_MODULES = ("model", "pose")


def experiment_scenario(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> DenseScenario:
    """The experiment's scenario for inference on ``device`` (``"meta"``: shapes only)."""
    device = torch.device(device)
    with torch.device(device):
        engine = Engine(cfg, Path(cfg.workdir), device, show_progress=False)
        return scenario_class(cfg.scenario)(cfg, engine, train=False, with_data=False)


def experiment_heads(cfg: ExperimentConfig) -> dict:
    """Task name -> head of the network the experiment's scenario builds."""
    return experiment_scenario(cfg, "meta").heads()


def build_experiment_model(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> MultiTaskNet:
    """The experiment's network on ``device`` (``"meta"``: shapes only, for checking and assigning weights)."""
    return experiment_scenario(cfg, device).inference_model()


def build_experiment_modules(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """Checkpoint module name -> module: ``model``, plus ``pose`` for the sde scenario."""
    modules = experiment_scenario(cfg, device).modules()
    return {name: module for name, module in modules.items() if name in WEIGHT_MODULES}
