"""The mtlda modules an experiment's checkpoint holds, built from the config alone (no data is read).

The heads follow the scenarios' rules (``DenseScenario.heads`` and ``SDEScenario.heads``): every task at
``model.scales``; for ``sde``, the ``disp`` head (sigmoid, ``sde.disp_scales``) and, in the multi-task stage, the
supervised tasks at ``sde.supervised_scales``. The pose net of ``sde`` is ``PoseNet(sde.pose_backbone)``.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlda.data.registry import dataset_info
from mtlda.models.decoder import HeadSpec
from mtlda.models.network import MultiTaskNet, build_network
from mtlda.models.pose import PoseNet
from mtlda.schema import ExperimentConfig
from mtlda.tasks import DisparityTask, build_tasks

SDE = "sde"


def experiment_heads(cfg: ExperimentConfig) -> dict[str, HeadSpec]:
    """Task name -> head of the network the experiment's scenario builds."""
    if cfg.scenario != SDE:
        scales = tuple(sorted(cfg.model.scales))
        tasks = build_tasks(cfg, dataset_info(cfg.data))
        return {name: HeadSpec(task.out_channels, scales) for name, task in tasks.items()}
    heads = {DisparityTask.name: HeadSpec(1, tuple(sorted(cfg.sde.disp_scales)), apply_sigmoid=True)}
    if cfg.sde.stage == "multitask":
        scales = tuple(sorted(cfg.sde.supervised_scales))
        tasks = build_tasks(cfg, dataset_info(cfg.data))
        heads.update({name: HeadSpec(task.out_channels, scales) for name, task in tasks.items()})
    return heads


def build_experiment_model(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> MultiTaskNet:
    """The experiment's network on ``device`` (``"meta"``: shapes only, for checking and assigning weights)."""
    with torch.device(device):
        return build_network(cfg.model, experiment_heads(cfg))


def build_experiment_modules(cfg: ExperimentConfig, device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """Checkpoint module name -> module: ``model``, plus ``pose`` for the sde scenario."""
    modules: dict[str, nn.Module] = {"model": build_experiment_model(cfg, device)}
    if cfg.scenario == SDE:
        with torch.device(device):
            modules["pose"] = PoseNet(cfg.sde.pose_backbone, "none")
    return modules
