"""The streaming-metric base: named sum/count states, reset, exact DDP reduction.

Every metric accumulates sums and counts only (confusion matrix, histograms, float64 sums), so results over a split
do not depend on the batch size or the order of batches, and summing the states of several ranks
(:meth:`StreamingMetric.all_reduce`) gives exactly the single-process result. ``update(pred, target, mask)`` takes
tensors like Kornia's metrics: predictions may come at any resolution and are resized to the target's
(bilinear, ``align_corners=False``); ``mask`` (B, 1, H, W) bool marks the valid target pixels (None: all valid).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mtlda.distributed import is_distributed


def full_mask(target: Tensor, mask: Tensor | None) -> Tensor:
    """(B, 1, H, W) bool: ``mask`` or all True for a (B, C, H, W) / (B, H, W) target."""
    if mask is not None:
        return mask.bool()
    return torch.ones((target.shape[0], 1, *target.shape[-2:]), dtype=torch.bool, device=target.device)


class StreamingMetric:
    """Base class. Subclasses register their state in ``_new_state`` and implement ``update``, ``compute`` and
    ``protocol_description``; ``details`` adds JSON-able extras to a results file (e.g. a confusion matrix)."""

    def __init__(self) -> None:
        self._state: dict[str, Tensor] = {}
        self.reset()

    def _new_state(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        self._state = self._new_state()

    def _follow(self, device: torch.device) -> None:
        """Keep the state on the device the predictions come from."""
        for key, value in self._state.items():
            if value.device != device:
                self._state[key] = value.to(device)

    def state_tensors(self) -> list[Tensor]:
        """The state, in a fixed (sorted-name) order: summing these across ranks is the exact reduction."""
        return [self._state[k] for k in sorted(self._state)]

    def load_state(self, tensors: list[Tensor]) -> None:
        """Replace the state by tensors in the order of :meth:`state_tensors` (e.g. sums over ranks)."""
        keys = sorted(self._state)
        if len(tensors) != len(keys):
            raise ValueError(f"expected {len(keys)} state tensors ({keys}), got {len(tensors)}")
        for key, value in zip(keys, tensors):
            if value.shape != self._state[key].shape:
                expected = tuple(self._state[key].shape)
                raise ValueError(f"state {key!r} must have shape {expected}, got {tuple(value.shape)}")
            self._state[key] = value.to(self._state[key].dtype).clone()

    def all_reduce(self) -> None:
        """Sum the state over all ranks when torch.distributed is initialised (no-op otherwise)."""
        if not is_distributed():
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        for key in sorted(self._state):
            value = self._state[key]
            reduced = value.to(device) if device is not None else value.clone()
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            self._state[key] = reduced.to(value.device)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """JSON-able extras of the accumulated state for results files (none by default)."""
        return {}

    def protocol_description(self) -> str:
        raise NotImplementedError
