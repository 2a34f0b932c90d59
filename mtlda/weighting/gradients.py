"""Gradient plumbing for gradient-level task balancing: per-task flat gradients, their average over DDP ranks,
writing a flat gradient back into ``.grad``, and the whole balanced backward step (:func:`weighted_backward`).

A flat gradient is the concatenation of the parameters' gradients, each flattened, in the order of the parameter
sequence: (P,) with P the total number of elements.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from mtlda.distributed import is_distributed
from mtlda.weighting.base import Weighting, WeightingError


class NonFiniteGradientError(RuntimeError):
    """Some task's gradient has inf or NaN values and no AMP scaler is there to skip the step."""


class ScalerLike(Protocol):
    """What :func:`weighted_backward` uses of ``torch.amp.GradScaler``."""

    def is_enabled(self) -> bool: ...

    def scale(self, outputs: Tensor) -> Tensor: ...

    def get_scale(self) -> float: ...


def reached_parameters(loss: Tensor) -> set[int]:
    """ids of the leaf tensors (parameters) that ``loss``'s autograd graph accumulates gradients into: a walk of
    the graph, no gradient computed."""
    seen: set[int] = set()
    leaves: set[int] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(child for child, _ in node.next_functions)
    return leaves


def _gradient_matrix(
    losses: Sequence[Tensor], params: Sequence[Tensor], retain_graph: bool, extra_columns: int = 0
) -> tuple[Tensor, list[bool]]:
    """(T, P + extra_columns) matrix whose row t holds d losses[t] / d params, flat (zeros where a loss does not
    reach a parameter; the extra columns are zeros), and which parameters any loss reaches."""
    if not params:
        raise WeightingError("no parameters to differentiate: pass the shared (and task-specific) parameters")
    dtype = params[0].dtype
    for p in params[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    numels = [p.numel() for p in params]
    matrix = torch.zeros(len(losses), sum(numels) + extra_columns, dtype=dtype, device=params[0].device)
    reached = [False] * len(params)
    for row, loss in enumerate(losses):
        if not loss.requires_grad:
            continue
        keep = retain_graph or row < len(losses) - 1
        grads = torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)
        offset = 0
        for index, (grad, numel) in enumerate(zip(grads, numels)):
            if grad is not None:
                matrix[row, offset : offset + numel] = grad.reshape(-1)
                reached[index] = True
            offset += numel
    return matrix, reached


def flat_task_gradients(
    losses: Mapping[str, Tensor], params: Sequence[Tensor], *, grad_scale: float = 1.0, retain_graph: bool = True
) -> dict[str, Tensor] | None:
    """task -> (P,) flat gradient of that task's loss w.r.t. ``params`` (zeros for parameters it does not reach),
    divided by ``grad_scale`` (the AMP GradScaler's scale when the losses were scaled by it). One backward pass per
    task, in sorted task order. Returns None when any value is inf or NaN: the caller should skip the step, as
    GradScaler does. Rank-local: nothing is all-reduced here."""
    tasks = sorted(losses)
    matrix, _ = _gradient_matrix([losses[t] for t in tasks], list(params), retain_graph)
    if grad_scale != 1.0:
        matrix /= grad_scale
    if not bool(torch.isfinite(matrix).all()):
        return None
    return dict(zip(tasks, matrix.unbind(0)))


def all_reduce_mean_(tensors: Sequence[Tensor]) -> None:
    """Average ``tensors`` in place over the default process group, in one flattened all_reduce call; a no-op when
    torch.distributed is not initialised or has one process. Every rank must call it with the same shapes."""
    if not is_distributed() or not tensors:
        return
    world = dist.get_world_size()
    if len(tensors) == 1 and tensors[0].is_contiguous():
        dist.all_reduce(tensors[0], op=dist.ReduceOp.SUM)
        tensors[0].div_(world)
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def rank_mean_losses(losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """task -> detached scalar loss averaged over DDP ranks (the input of ``Weighting.after_step``)."""
    tasks = sorted(losses)
    stacked = torch.stack([losses[t].detach().reshape(()) for t in tasks])
    all_reduce_mean_([stacked])
    return dict(zip(tasks, stacked.unbind(0)))


def _views(params: Sequence[Tensor], flat: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    total = sum(p.numel() for p in params)
    if flat.dim() != 1 or flat.numel() != total:
        raise WeightingError(
            f"a flat gradient of {total} elements is needed for these parameters, got shape {tuple(flat.shape)}"
        )
    offset = 0
    for p in params:
        yield p, flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()


def _write_gradients(
    params: Sequence[Tensor], flat: Tensor, scale: float, accumulate: bool, include: Sequence[bool] | None = None
) -> None:
    for index, (p, view) in enumerate(_views(params, flat)):
        if include is not None and not include[index]:
            continue
        value = (view * scale if scale != 1.0 else view).to(p.dtype)
        if accumulate and p.grad is not None:
            p.grad.add_(value)
        else:
            p.grad = torch.empty_like(p).copy_(value)  # the parameter's memory format: fused optimisers assume it


def assign_flat_gradient(
    params: Sequence[Tensor], flat: Tensor, scale: float = 1.0, *, accumulate: bool = False
) -> None:
    """Write the (P,) ``flat`` gradient into the parameters' ``.grad``, multiplied by ``scale`` (the GradScaler's
    scale, so that a scaler-driven optimiser step that unscales again stays consistent); replaces ``.grad``, or adds
    to it when ``accumulate``."""
    _write_gradients(list(params), flat, scale, accumulate)


def _split_named(
    shared_params: Sequence[Tensor] | Mapping[str, Tensor],
) -> tuple[list[str] | None, list[Tensor]]:
    if isinstance(shared_params, Mapping):
        return list(shared_params), list(shared_params.values())
    return None, list(shared_params)


def weighted_backward(
    method: Weighting,
    losses: Mapping[str, Tensor],
    shared_params: Sequence[Tensor] | Mapping[str, Tensor],
    specific_params: Sequence[Tensor],
    scaler: ScalerLike | None = None,
) -> dict[str, float]:
    """The whole gradient-level step: per-task gradients of the shared and task-specific parameters, averaged over
    DDP ranks (one all_reduce, with the losses), unscaled, balanced by ``method.combine_gradients``; then the shared
    parameters get the combined gradient and each task-specific parameter sum_t w_t g_t (task t's gradient of it).
    Returns the weights w_t.

    losses: task -> scalar unweighted loss of this rank's batch, with graph (the graph is freed afterwards).
    shared_params: the shared parameters, or a mapping name -> parameter (needed by GradNorm's ``norm_params``).
    specific_params: the remaining trainable parameters (heads, task-specific blocks); a parameter several tasks
    reach gets the weighted sum of their gradients.
    scaler: the AMP GradScaler; when enabled the losses are scaled by it (``scaler.scale``) before differentiation,
    so fp16 gradients do not underflow, and the written gradients are multiplied by its scale again, so
    ``scaler.step(optimizer)`` unscales them to exactly the balanced gradient (scales are powers of two).

    Like ``Tensor.backward()``, gradients are added to ``.grad``; parameters that no task reaches (on any rank) are
    left alone.
    If any gradient is inf or NaN: with an enabled scaler the plain sum of the task gradients (non-finite) is
    written, so ``scaler.step`` skips the step and ``scaler.update`` lowers the scale, and the method is not
    consulted; without one, ``NonFiniteGradientError`` is raised.

    Cost: T backward passes (one per task) instead of one, and a T x (P_shared + P_specific) gradient matrix in
    memory. Under DDP, run the forward (and this call) inside ``ddp_model.no_sync()``: DDP's own gradient
    reduction does not see ``autograd.grad``, and the averaging is done here instead.
    """
    names, shared = _split_named(shared_params)
    specific = list(specific_params)
    shared_ids = {id(p) for p in shared}
    if any(id(p) in shared_ids for p in specific):
        raise WeightingError("a parameter is both shared and task-specific: pass each parameter in one list only")
    if names is not None:
        method.bind_shared_parameters(names, [p.numel() for p in shared])
    method.stack_losses(losses)
    tasks = method.tasks
    params = shared + specific
    if scaler is not None and scaler.is_enabled():
        scaled = [scaler.scale(losses[t]) for t in tasks]
        scale = float(scaler.get_scale())
    else:
        scaled, scale = [losses[t] for t in tasks], 1.0
    # Columns: the gradients, the loss, then (row 0) which parameters this rank reached; all averaged at once.
    matrix, reached_here = _gradient_matrix(scaled, params, retain_graph=False, extra_columns=1 + len(params))
    size = matrix.shape[1] - 1 - len(params)
    matrix[:, size] = torch.stack([losses[t].detach().reshape(()) for t in tasks]).to(matrix)
    matrix[0, size + 1 :] = torch.tensor(reached_here, dtype=matrix.dtype)
    all_reduce_mean_([matrix])
    grads, global_losses = matrix[:, :size], matrix[:, size]
    reached = (matrix[0, size + 1 :] > 0).tolist()
    if scale != 1.0:
        grads.div_(scale)
    finite = torch.isfinite(matrix[:, : size + 1]).all(dim=1).tolist()
    if not all(finite):
        if scale == 1.0:
            bad = [t for t, ok in zip(tasks, finite) if not ok]
            raise NonFiniteGradientError(
                f"non-finite gradients or losses of task(s) {bad}: lower the learning rates, keep gradient clipping "
                "on or check the data and targets of these tasks"
            )
        _write_gradients(params, grads.sum(dim=0), scale, accumulate=True, include=reached)
        return method.weights()
    num_shared = sum(p.numel() for p in shared)
    combined, weights = method.combine_gradients(
        {t: grads[i, :num_shared] for i, t in enumerate(tasks)}, {t: global_losses[i] for i, t in enumerate(tasks)}
    )
    _write_gradients(shared, combined, scale, accumulate=True, include=reached[: len(shared)])
    if specific:
        task_weights = torch.tensor([weights[t] for t in tasks], dtype=grads.dtype, device=grads.device)
        _write_gradients(specific, task_weights @ grads[:, num_shared:], scale, True, reached[len(shared) :])
    return weights
