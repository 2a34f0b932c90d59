"""Activation checkpointing of network segments (``model.checkpointing``), with BatchNorm statistics updated once.

A checkpointed segment keeps only its inputs during the forward pass and recomputes its activations during the
backward pass (``torch.utils.checkpoint``, non-reentrant). Recomputation must not change training:

* BatchNorm layers in training mode normalise with the statistics of the batch, which the recomputation sees again
  unchanged, so their outputs are identical; but they also update running_mean, running_var and
  num_batches_tracked a second time. The recomputation therefore updates scratch copies of the segment's BatchNorm
  buffers, dropped when it ends, so that each forward updates them exactly once, for any momentum
  (including the cumulative average, momentum None). The recomputation must see the same tensors as the forward
  pass (torch checks how many it saves), so the layers themselves run unchanged.
* Dropout draws the same mask: torch's checkpoint restores the RNG state (CPU and the tensors' devices) before
  recomputing and puts the current state back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

CHECKPOINTING = ("none", "encoder", "all")


@contextmanager
def batchnorm_buffers_restored(module: nn.Module) -> Iterator[None]:
    """Inside the block the BatchNorm layers of ``module`` update scratch copies of their buffers (running
    statistics and batch count); on exit the layers get their own tensors back, as they were on entry. Training-mode
    passes inside normalise with their batch statistics as usual, for any momentum and BatchNorm type, and no tensor
    that autograd saved is modified in place. Used by recomputed segments and by UDA's source passes
    (``uda.target_bn_statistics``)."""
    originals = [(m, dict(m.named_buffers(recurse=False))) for m in module.modules() if isinstance(m, _BatchNorm)]
    for layer, buffers in originals:
        for name, buffer in buffers.items():
            setattr(layer, name, buffer.clone())
    try:
        yield
    finally:
        for layer, buffers in originals:
            for name, buffer in buffers.items():
                setattr(layer, name, buffer)


def run_segment(module: nn.Module, *args: Any, checkpointed: bool) -> Any:
    """``module(*args)``; with ``checkpointed`` (and gradients being recorded) its activations are recomputed in the
    backward pass instead of kept. Arguments may be tensors or containers of tensors."""
    if not checkpointed or not torch.is_grad_enabled():
        return module(*args)
    return checkpoint(
        module, *args, use_reentrant=False, context_fn=lambda: (nullcontext(), batchnorm_buffers_restored(module))
    )
