"""Data sets (Cityscapes, Synthia, Virtual KITTI 2, NYUDv2, toycity), augmentation and the Batch container.

``build_dataset``, ``dataset_info``, ``DatasetInfo`` and ``DatasetError`` are imported on first use, so that
modules which only need :class:`Batch` do not load OpenCV and the loaders.
"""

from typing import Any

from mtlda.data.batch import Batch, Sample, collate

_LAZY = {"build_dataset": "registry", "dataset_info": "registry", "DatasetInfo": "registry", "DatasetError": "io"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"mtlda.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mtlda.data' has no attribute {name!r}")


__all__ = ["Batch", "Sample", "collate", "DatasetError", "DatasetInfo", "build_dataset", "dataset_info"]
