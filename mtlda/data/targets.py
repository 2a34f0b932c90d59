"""Target kinds: how a per-pixel target is resized, padded and mirrored, and the kind of every target name.

A :class:`TargetKind` holds three rules for a target tensor of shape (C, H, W) (or (H, W) for label maps), so that
:mod:`mtlda.data.augment` treats a target by its kind and never by its name:

==============  ===================================  ===============  ========================
kind            resize (``align_corners=False``)     crop padding     horizontal flip
==============  ===================================  ===============  ========================
label map       ``nearest-exact``                    ``IGNORE_INDEX`` mirror
scalar map      ``nearest-exact``                    0                mirror
unit vectors    ``nearest-exact``                    0                mirror, x negated
binary map      max over the footprint when          0                mirror
                shrinking, then ``nearest-exact``
flow field      ``nearest-exact``, u scaled by       0                mirror, u negated
                W'/W and v by H'/H
==============  ===================================  ===============  ========================

Masks (bool, (1, H, W)) of every target are resized ``nearest-exact``, padded False and mirrored.

The built-in targets are ``semseg`` (label map), ``depth`` (scalar map), ``normals`` (unit vectors) and ``edges``
(binary map); :func:`register_target` adds one, e.g. ``register_target("height", SCALAR_MAP)``, and a loader
reads it with a target reader (:meth:`mtlda.data.base.DenseDataset.register_target_reader`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlda.constants import IGNORE_INDEX

Size = tuple[int, int]


def resize_nearest(x: Tensor, size: Size) -> Tensor:
    """(..., H, W) of any dtype resized to ``size`` (h, w) with ``nearest-exact`` (pixel-centre-correct) sampling."""
    batched = x.reshape(1, -1, *x.shape[-2:])
    out = F.interpolate(batched.to(torch.float32), size=size, mode="nearest-exact")
    return out.to(x.dtype).reshape(*x.shape[:-2], *size)


def resize_keeping_maxima(x: Tensor, size: Size) -> Tensor:
    """(C, H, W): the maximum over each output pixel's footprint when shrinking (a 1-px line is never lost), then
    ``nearest-exact`` when enlarging."""
    pooled = F.adaptive_max_pool2d(x[None].float(), (min(size[0], x.shape[-2]), min(size[1], x.shape[-1])))[0]
    return resize_nearest(pooled, size).to(x.dtype)


def resize_flow(x: Tensor, size: Size) -> Tensor:
    """(2, H, W) pixel displacements (u, v): ``nearest-exact`` sampling, u scaled by W'/W and v by H'/H."""
    scale = torch.tensor([size[1] / x.shape[-1], size[0] / x.shape[-2]], dtype=x.dtype).reshape(2, 1, 1)
    return resize_nearest(x, size) * scale


def mirror(x: Tensor) -> Tensor:
    """(..., H, W) mirrored left-right."""
    return x.flip(-1)


def mirror_negating_x(x: Tensor) -> Tensor:
    """(C, H, W) mirrored left-right with channel 0 (the x or u component) negated."""
    out = x.flip(-1).clone()
    out[0] = -out[0]
    return out


@dataclass(frozen=True)
class TargetKind:
    """How targets of one kind follow a geometric transform: ``resize(x, (h, w))``, the ``pad_value`` of crops
    reaching outside the image, and ``flip(x)`` for a horizontal mirror."""

    name: str
    resize: Callable[[Tensor, Size], Tensor]
    pad_value: float
    flip: Callable[[Tensor], Tensor]


LABEL_MAP = TargetKind("label map", resize_nearest, float(IGNORE_INDEX), mirror)
SCALAR_MAP = TargetKind("scalar map", resize_nearest, 0.0, mirror)
UNIT_VECTORS = TargetKind("unit vectors", resize_nearest, 0.0, mirror_negating_x)
BINARY_MAP = TargetKind("binary map", resize_keeping_maxima, 0.0, mirror)
FLOW_FIELD = TargetKind("flow field", resize_flow, 0.0, mirror_negating_x)
MASK = TargetKind("mask", resize_nearest, 0.0, mirror)  # validity masks: padded False

_KINDS: dict[str, TargetKind] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_target(name: str, kind: TargetKind, description: str = "") -> None:
    """Declare target ``name`` of ``kind``; ``description`` (e.g. "edge labels") names it in error messages.

    Registering a name again with the same kind is allowed; with another kind it is an error.
    """
    if name in _KINDS and _KINDS[name] != kind:
        raise ValueError(f"target {name!r} is already registered as a {_KINDS[name].name}, not a {kind.name}")
    _KINDS[name] = kind
    _DESCRIPTIONS[name] = description or f"{name} targets"


def target_kind(name: str) -> TargetKind:
    """The kind of target ``name``; an unknown name is an error listing the registered ones."""
    if name not in _KINDS:
        close = difflib.get_close_matches(name, list(_KINDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown target {name!r}{hint}; registered: {', '.join(_KINDS)} (add one with "
                         "mtlda.data.targets.register_target)")
    return _KINDS[name]


def target_names() -> tuple[str, ...]:
    """Registered target names, in registration order."""
    return tuple(_KINDS)


def describe_target(name: str) -> str:
    """What target ``name`` is, for messages ("edge labels")."""
    target_kind(name)
    return _DESCRIPTIONS[name]


register_target("semseg", LABEL_MAP, "semantic labels")
register_target("depth", SCALAR_MAP, "depth maps")
register_target("normals", UNIT_VECTORS, "surface normals")
register_target("edges", BINARY_MAP, "edge labels")
