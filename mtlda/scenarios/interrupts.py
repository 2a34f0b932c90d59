"""Stopping a run cleanly on Ctrl-C / SIGTERM: the current step finishes, the run saves, then it stops.

A first signal only sets a flag that the engine reads between steps (under torchrun the ranks agree on it, so all
stop after the same step). A second signal interrupts at once; the engine then saves nothing (the step was cut
short), and the last checkpoint on disk stays the last complete state.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

from mtlda.distributed import is_distributed
from mtlda.errors import Interrupted

__all__ = ["Interrupted", "StopRequest"]


class StopRequest:
    """Installs SIGINT/SIGTERM handlers for its lifetime (main thread only) and records the first signal."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank was asked to stop (every rank must call this at the same point)."""
        requested = self.signal_name is not None
        if not is_distributed():
            return requested
        flag = torch.tensor([1.0 if requested else 0.0], device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
