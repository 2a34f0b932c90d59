"""The task-balancing contract: a :class:`Weighting` turns per-task losses (loss level) or per-task gradients of the
shared parameters (gradient level) into one update, and keeps everything it needs to continue after a resume in
its parameters and buffers (tensors only, so checkpoints load with ``torch.load(weights_only=True)``).

Subclasses see tasks in one fixed order, ``self.tasks`` (sorted names), and work on stacked tensors:
``(T,)`` losses and ``(T, P)`` gradient matrices, already multiplied by the fixed weights when the method scales by
them. The public methods check and stack the engine's mappings, apply that scaling, and convert back.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlda.errors import UserInputError

# Option key of every adaptive method: multiply each task's loss by its fixed weight before balancing.
SCALE_BY_FIXED_WEIGHTS = "scale_by_fixed_weights"


class WeightingError(UserInputError):
    """A wrong weighting name, option, task set or input, with a message that names the problem and the fix."""


def closest_hint(name: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Option:
    """One option of a method: its default, its kind (``number``, ``integer``, ``bool`` or ``string``) and, for
    numbers and integers, a lower bound (``minimum``; excluded when ``exclusive``)."""

    default: Any
    kind: str
    minimum: float | None = None
    exclusive: bool = False

    def describe(self) -> str:
        article = "an" if self.kind == "integer" else "a"
        text = f"{article} {self.kind}"
        if self.minimum is not None:
            text += f" {'>' if self.exclusive else '>='} {self.minimum:g}"
        return text

    def parse(self, value: Any) -> Any:
        """``value`` as this option's Python type; ``ValueError`` when it does not fit."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if self.kind == "string":
            if not isinstance(value, str):
                raise ValueError
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError
        if self.kind == "integer":
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        else:
            value = float(value)
        if self.minimum is not None and (value < self.minimum or (self.exclusive and value == self.minimum)):
            raise ValueError
        return value


def number(default: float, minimum: float | None = None, exclusive: bool = False) -> Option:
    return Option(float(default), "number", minimum, exclusive)


def integer(default: int, minimum: int | None = None) -> Option:
    return Option(int(default), "integer", minimum)


def flag(default: bool) -> Option:
    return Option(bool(default), "bool")


def text(default: str) -> Option:
    return Option(str(default), "string")


# Adaptive methods balance the papers' unweighted losses unless this is switched on.
SCALE_OPTION = {SCALE_BY_FIXED_WEIGHTS: flag(False)}


def parse_options(method: str, specs: Mapping[str, Option], options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of ``method`` with its value from ``options`` or its default; ``WeightingError`` for an unknown
    key or a value of the wrong kind."""
    valid = ", ".join(sorted(specs)) or "none"
    parsed = {key: spec.default for key, spec in specs.items()}
    for key, value in options.items():
        if key not in specs:
            raise WeightingError(
                f"unknown option {key!r} for weighting {method!r}{closest_hint(str(key), list(specs))}; "
                f"valid options: {valid}"
            )
        try:
            parsed[key] = specs[key].parse(value)
        except ValueError:
            raise WeightingError(
                f"weighting {method!r}: option {key!r} must be {specs[key].describe()}, got {value!r}"
            ) from None
    return parsed


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    names = list(tasks)
    if not names or not all(isinstance(t, str) for t in names) or len(set(names)) != len(names):
        raise WeightingError(f"tasks must be a non-empty list of distinct names, got {names}")
    return tuple(sorted(names))


def _check_fixed_weights(tasks: tuple[str, ...], fixed_weights: Mapping[str, float]) -> dict[str, float]:
    missing = [t for t in tasks if t not in fixed_weights]
    extra = sorted(str(t) for t in fixed_weights if t not in tasks)
    if missing or extra:
        raise WeightingError(
            f"fixed_weights must give one weight per task {list(tasks)}: missing {missing}, unexpected {extra}"
        )
    weights = {}
    for task in tasks:
        value = fixed_weights[task]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise WeightingError(f"fixed weight of task {task!r} must be a finite number >= 0, got {value!r}")
        weights[task] = float(value)
    return weights


class Weighting(nn.Module):
    """Base of every task-balancing method (see the module docstring for the contract).

    Subclasses set ``name``, ``level`` (``"loss"`` or ``"gradient"``), ``cost`` and ``option_specs`` and implement
    ``_combine_losses`` (loss level) or ``_combine_gradients`` (gradient level), ``_current_weights`` and, when
    they keep a history, ``_observe``.
    """

    name: ClassVar[str]
    level: ClassVar[str]
    cost: ClassVar[str]
    option_specs: ClassVar[Mapping[str, Option]] = {}

    def __init__(self, tasks: Sequence[str], fixed_weights: Mapping[str, float], **options: Any) -> None:
        super().__init__()
        self.tasks = _check_tasks(tasks)
        self.fixed_weights = _check_fixed_weights(self.tasks, fixed_weights)
        self.options = parse_options(self.name, self.option_specs, options)
        scaled = self._scales_by_fixed_weights()
        self.loss_scales = tuple(self.fixed_weights[t] if scaled else 1.0 for t in self.tasks)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def _scales_by_fixed_weights(self) -> bool:
        return bool(self.options.get(SCALE_BY_FIXED_WEIGHTS, False))

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}, options={self.options}"

    # ----------------------------------------------------------------------------------- public API
    def combine_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        """losses: task -> scalar loss of this rank's batch (with graph; unweighted task loss). Returns the scalar to
        backpropagate (differentiable w.r.t. learnable weighting parameters such as uncertainty's log-variances)."""
        if self.level != "loss":
            raise WeightingError(
                f"weighting {self.name!r} balances gradients: call mtlda.weighting.weighted_backward(...) "
                "instead of combine_losses"
            )
        return self._combine_losses(self._scaled(self.stack_losses(losses)))

    def combine_gradients(
        self, grads: Mapping[str, Tensor], losses: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, float]]:
        """grads: task -> (P,) flat gradient of that task's loss w.r.t. the shared parameters, already averaged over
        DDP ranks and unscaled from AMP; losses: task -> detached global scalar losses. Returns the combined (P,)
        shared gradient and the per-task weights to apply to the task-specific (non-shared) parameters' gradients."""
        if self.level != "gradient":
            raise WeightingError(
                f"weighting {self.name!r} balances losses: backpropagate combine_losses(...) instead of "
                "calling combine_gradients"
            )
        matrix = self.stack_gradients(grads)
        if any(s != 1.0 for s in self.loss_scales):
            matrix = matrix * matrix.new_tensor(self.loss_scales)[:, None]
        shared, weights = self._combine_gradients(matrix, self._scaled(self.stack_losses(losses).detach()))
        raw = weights.detach().double().cpu() * torch.tensor(self.loss_scales, dtype=torch.float64)
        return shared, dict(zip(self.tasks, raw.tolist()))

    def after_step(self, losses: Mapping[str, Tensor]) -> None:
        """Called once per optimiser step with detached global (rank-averaged) task losses (DWA history, FAMO update,
        ...)."""
        with torch.no_grad():
            self._observe(self._scaled(self.stack_losses(losses).detach()))

    def weights(self) -> dict[str, float]:
        """The current effective per-task weights (on the unweighted task losses), for logging."""
        current = self._current_weights().detach().double().cpu()
        return dict(zip(self.tasks, (current * torch.tensor(self.loss_scales, dtype=torch.float64)).tolist()))

    def bind_shared_parameters(self, names: Sequence[str], numels: Sequence[int]) -> None:
        """Names and sizes of the shared parameters in flat-gradient order, given by ``weighted_backward`` when it is
        passed them by name; methods that look at a named subset (GradNorm's ``norm_params``) resolve it here."""

    # ------------------------------------------------------------------------------ stacking helpers
    def stack_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        """(T,) losses in ``self.tasks`` order; ``WeightingError`` unless there is one scalar per task."""
        self._check_keys("losses", losses)
        values = [torch.as_tensor(losses[t]) for t in self.tasks]
        if any(v.numel() != 1 for v in values):
            shapes = {t: tuple(v.shape) for t, v in zip(self.tasks, values)}
            raise WeightingError(f"each task loss must be a scalar, got shapes {shapes}; reduce the loss first")
        return torch.stack([v.reshape(()) for v in values])

    def stack_gradients(self, grads: Mapping[str, Tensor]) -> Tensor:
        """(T, P) gradient matrix in ``self.tasks`` order; ``WeightingError`` unless there is one (P,) per task."""
        self._check_keys("grads", grads)
        shapes = {t: tuple(grads[t].shape) for t in self.tasks}
        if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
            raise WeightingError(f"grads must be flat (P,) tensors of one size, got shapes {shapes}")
        return torch.stack([grads[t] for t in self.tasks])

    def _check_keys(self, what: str, values: Mapping[str, Any]) -> None:
        if set(values) != set(self.tasks):
            raise WeightingError(
                f"weighting {self.name!r} expects {what} for tasks {list(self.tasks)}, got {sorted(map(str, values))}"
            )

    def _scaled(self, losses: Tensor) -> Tensor:
        if all(s == 1.0 for s in self.loss_scales):
            return losses
        return losses * losses.new_tensor(self.loss_scales)

    # ----------------------------------------------------------------------------- subclass hooks
    def _combine_losses(self, losses: Tensor) -> Tensor:
        """(T,) losses with graph -> scalar to backpropagate."""
        raise NotImplementedError

    def _combine_gradients(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """(T, P) gradients and (T,) detached losses -> (P,) combined gradient and (T,) task-specific weights."""
        raise NotImplementedError

    def _observe(self, losses: Tensor) -> None:
        """(T,) detached global losses of the step just taken."""

    def _current_weights(self) -> Tensor:
        """(T,) weights on the (scaled) losses."""
        raise NotImplementedError
