"""The registry of data sets: loader classes by name, from which every list of data sets is read.

A loader module registers its class with ``@register_dataset``; the built-in modules (:data:`BUILTIN_MODULES`)
are imported on the first look-up, so that ``dataset_class("cityscapes")`` works from anywhere. ``toycity`` is not a
loader: it generates folders in a registered data set's format (:mod:`mtlda.data.toycity_export`) and is listed
first where a name may be given (``dataset_names(toycity=True)``).
"""

from __future__ import annotations

import difflib
from importlib import import_module
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mtlda.data.base import DenseDataset

BUILTIN_MODULES = ("mtlda.data.cityscapes", "mtlda.data.synthia", "mtlda.data.vkitti2", "mtlda.data.nyudv2")
TOYCITY = "toycity"

D = TypeVar("D", bound="type[DenseDataset]")
_DATASETS: dict[str, type[DenseDataset]] = {}


def register_dataset(cls: D) -> D:
    """Class decorator registering a loader under its ``name``; a name taken by another class is an error."""
    if cls.name == TOYCITY or _DATASETS.get(cls.name, cls) is not cls:
        raise ValueError(f"data set name {cls.name!r} is already taken")
    _DATASETS[cls.name] = cls
    return cls


def _registered() -> dict[str, type[DenseDataset]]:
    """Every registered loader: the built-in ones in :data:`BUILTIN_MODULES` order, then the others in the order
    they registered (import order does not change the listing)."""
    for module in BUILTIN_MODULES:
        import_module(module)
    rank = {module: i for i, module in enumerate(BUILTIN_MODULES)}
    order = sorted(_DATASETS.items(), key=lambda item: rank.get(item[1].__module__, len(rank)))
    return dict(order)


def dataset_class(name: str) -> type[DenseDataset]:
    """The loader class of data set ``name``; an unknown name is an error listing the registered ones."""
    registered = _registered()
    if name not in registered:
        close = difflib.get_close_matches(str(name), list(registered), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown data set {name!r}{hint}; registered: {', '.join(registered)}")
    return registered[name]


def dataset_names(*, toycity: bool = False, sequences: bool = False) -> tuple[str, ...]:
    """Registered data set names in registration order; ``toycity`` puts the built-in toycity first, ``sequences``
    keeps those with image sequences (toycity has them, in the cityscapes format)."""
    names = [name for name, cls in _registered().items() if cls.has_sequences or not sequences]
    return (TOYCITY, *names) if toycity else tuple(names)


def describe_datasets(*, toycity: bool = False, sequences: bool = False) -> str:
    """One help-text line per data set of :func:`dataset_names`: name, title and root variable."""
    lines = [f"{TOYCITY}: built-in procedural street scenes (generated on first use)"] if toycity else []
    lines += [f"{name}: {cls.title} (folder from ${cls.root_variable})"
              for name, cls in _registered().items() if cls.has_sequences or not sequences]
    return "\n".join(lines)
