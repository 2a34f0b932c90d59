"""Resizing dense prediction maps to the resolution of their targets (the one place that does it)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_to(pred: Tensor, size: tuple[int, int] | tuple[int, ...]) -> Tensor:
    """pred (B, C, h, w) resized bilinearly (``align_corners=False``) to ``size`` = (H, W); unchanged if it matches.

    Integer maps are resized as float (callers resize class ids with nearest sampling themselves).
    """
    size = tuple(int(s) for s in size[-2:])
    if tuple(pred.shape[-2:]) == size:
        return pred
    source = pred if pred.is_floating_point() else pred.float()
    return F.interpolate(source, size=size, mode="bilinear", align_corners=False)
