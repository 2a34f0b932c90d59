"""Tasks: one class per dense task, registered by name (and code), built from an experiment config.

Adding a task is one module: a :class:`Task` subclass decorated with :func:`register_task` (plus its loss and
metric if they are new, and the loaders that read its target). The built-in tasks register on import here.
"""

from mtlda.tasks.base import Task
from mtlda.tasks.depth import DepthTask
from mtlda.tasks.disparity import DisparityTask
from mtlda.tasks.edges import EdgesTask
from mtlda.tasks.normals import NormalsTask
from mtlda.tasks.registry import TASKS, build_tasks, check_codes, register_task, task_codes
from mtlda.tasks.semseg import SemsegTask
from mtlda.tasks.weights import PAPER_WEIGHTS, default_weights, task_weights

__all__ = [
    "PAPER_WEIGHTS",
    "TASKS",
    "DepthTask",
    "DisparityTask",
    "EdgesTask",
    "NormalsTask",
    "SemsegTask",
    "Task",
    "build_tasks",
    "check_codes",
    "default_weights",
    "register_task",
    "task_codes",
    "task_weights",
]
