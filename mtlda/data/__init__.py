"""Data sets (Cityscapes, Synthia, Virtual KITTI 2, NYUDv2, toycity), augmentation and the Batch container.

The loaders and the registry are imported on first use (``build_dataset``, ``dataset_info``, ``DatasetInfo``,
``dataset_class``, ``dataset_names``, ``register_dataset``, ``register_target``), so that modules which only need
:class:`Batch` or the errors do not load OpenCV and the loaders.
"""

from typing import Any

from mtlda.data.batch import Batch, Sample, collate
from mtlda.data.errors import DatasetError, original_message

_LAZY = {"build_dataset": "registry", "dataset_info": "registry", "DatasetInfo": "registry",
         "dataset_class": "catalog", "dataset_names": "catalog", "register_dataset": "catalog",
         "register_target": "targets"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"mtlda.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mtlda.data' has no attribute {name!r}")


__all__ = ["Batch", "Sample", "collate", "DatasetError", "original_message", "DatasetInfo", "build_dataset",
           "dataset_info", "dataset_class", "dataset_names", "register_dataset", "register_target"]
