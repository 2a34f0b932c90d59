"""Task-balancing methods: analytic cases with hand-computed answers, options, resume and the gradient plumbing."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from mtlda.benchmarking import plan, random_data
from mtlda.benchmarking.cases import case_config
from mtlda.scenarios.engine import Engine
from mtlda.scenarios.evaluation import task_losses
from mtlda.scenarios.optim import build_optimizer
from mtlda.schema import OptimConfig
from mtlda.scenarios.registry import scenario_class
from mtlda.weighting import (
    WEIGHTINGS,
    NonFiniteGradientError,
    WeightingError,
    all_reduce_mean_,
    assign_flat_gradient,
    build_weighting,
    flat_task_gradients,
    rank_mean_losses,
    weighted_backward,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TWO = ("a", "b")
ONES = {"a": 1.0, "b": 1.0}


def _vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _losses(*values: float, tasks: tuple[str, ...] = TWO, grad: bool = False) -> dict[str, torch.Tensor]:
    return {t: torch.tensor(v, dtype=torch.float64, requires_grad=grad) for t, v in zip(tasks, values)}


def _grads(*rows: tuple[float, ...], tasks: tuple[str, ...] = TWO) -> dict[str, torch.Tensor]:
    return {t: _vec(*row) for t, row in zip(tasks, rows)}


# ------------------------------------------------------------------------------------ registry and options
def test_registry_has_every_method_with_level_and_cost():
    assert list(WEIGHTINGS) == ["fixed", "uncertainty", "dwa", "gradnorm", "pcgrad", "cagrad", "nashmtl", "famo"]
    for name, cls in WEIGHTINGS.items():
        assert cls.name == name and cls.level in ("loss", "gradient") and cls.cost
        method = build_weighting(name, ("b", "a"), ONES)
        assert isinstance(method, cls) and method.tasks == ("a", "b")


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("pcgrd", {}, r"unknown weighting 'pcgrd' \(did you mean 'pcgrad'\?\); choose one of fixed, uncertainty, "),
        ("dwa", {"temprature": 2.0}, r"'temprature' .*'temperature'\?\); valid options: period, scale_by_fixed"),
        ("dwa", {"temperature": 0}, r"option 'temperature' must be a number > 0, got 0"),
        ("dwa", {"period": 1.5}, r"option 'period' must be an integer >= 1, got 1.5"),
        ("cagrad", {"c": True}, r"option 'c' must be a number >= 0, got True"),
        ("cagrad", {"c": "0.4"}, r"option 'c' must be a number >= 0, got '0.4'"),
        ("famo", {"lr": float("nan")}, r"option 'lr' must be a number > 0"),
        ("pcgrad", {"scale_by_fixed_weights": "yes"}, r"option 'scale_by_fixed_weights' must be a bool"),
        ("fixed", {"scale_by_fixed_weights": True}, r"valid options: none"),
        ("nashmtl", {"seed": 1}, r"unknown option 'seed' for weighting 'nashmtl'"),
    ],
)
def test_bad_name_or_option_is_named(name, options, message):
    with pytest.raises(WeightingError, match=message) as info:
        build_weighting(name, TWO, ONES, options)
    assert isinstance(info.value, ValueError)


def test_options_accept_yaml_numbers():
    dwa = build_weighting("dwa", TWO, ONES, {"temperature": 3, "period": 4.0})
    assert dwa.options == {"scale_by_fixed_weights": False, "temperature": 3.0, "period": 4}
    assert isinstance(dwa.options["period"], int)


def test_tasks_weights_and_inputs_are_checked():
    with pytest.raises(WeightingError, match=r"missing \['b'\], unexpected \['c'\]"):
        build_weighting("fixed", TWO, {"a": 1.0, "c": 1.0})
    with pytest.raises(WeightingError, match="fixed weight of task 'a' must be a finite number >= 0"):
        build_weighting("fixed", TWO, {"a": -1.0, "b": 1.0})
    with pytest.raises(WeightingError, match="distinct names"):
        build_weighting("fixed", ("a", "a"), ONES)
    fixed = build_weighting("fixed", TWO, ONES)
    with pytest.raises(WeightingError, match=r"expects losses for tasks \['a', 'b'\], got \['a'\]"):
        fixed.combine_losses({"a": torch.tensor(1.0)})
    with pytest.raises(WeightingError, match="must be a scalar"):
        fixed.combine_losses({"a": torch.ones(2), "b": torch.tensor(1.0)})
    with pytest.raises(WeightingError, match="balances losses: backpropagate combine_losses"):
        fixed.combine_gradients(_grads((1.0,), (1.0,)), _losses(1.0, 1.0))
    with pytest.raises(WeightingError, match=r"balances gradients: call mtlda.weighting.weighted_backward"):
        build_weighting("pcgrad", TWO, ONES).combine_losses(_losses(1.0, 1.0))
    with pytest.raises(WeightingError, match=r"flat \(P,\) tensors of one size"):
        build_weighting("pcgrad", TWO, ONES).combine_gradients(_grads((1.0,), (1.0, 2.0)), _losses(1.0, 1.0))


# ----------------------------------------------------------------------------------------- loss level
def test_fixed_is_the_weighted_sum():
    fixed = build_weighting("fixed", TWO, {"a": 50.0, "b": 1.0})
    losses = _losses(0.3, 2.0, grad=True)
    total = fixed.combine_losses(losses)
    assert float(total.detach()) == pytest.approx(50 * 0.3 + 2.0)
    total.backward()
    assert float(losses["a"].grad) == 50.0 and float(losses["b"].grad) == 1.0
    assert fixed.weights() == {"a": 50.0, "b": 1.0}


def test_uncertainty_value_and_gradient_match_the_formula():
    method = build_weighting("uncertainty", TWO, ONES, {"init_log_variance": 0.3})
    losses = _losses(2.0, 0.5, grad=True)
    total = method.combine_losses(losses)
    s = 0.3
    assert float(total.detach()) == pytest.approx(math.exp(-s) * 2.0 + s + math.exp(-s) * 0.5 + s)
    total.backward()
    expected = [1 - math.exp(-s) * 2.0, 1 - math.exp(-s) * 0.5]
    torch.testing.assert_close(method.log_variances.grad.double(), _vec(*expected))
    assert float(losses["a"].grad) == pytest.approx(math.exp(-s))


def test_learnable_task_weights_get_no_weight_decay():
    method = build_weighting("uncertainty", TWO, ONES, {"init_log_variance": -4.0})
    decoder = nn.Parameter(torch.ones(2))
    opt = build_optimizer({"decoders": [decoder], "weighting": list(method.parameters())},
                          OptimConfig(name="sgd", lr={"decoders": 1.0, "weighting": 1.0}, weight_decay=5e-4))
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only weight decay moves a parameter, and it must leave the log-variances alone
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups} == {"decoders": 5e-4, "weighting": 0.0}
    assert torch.equal(method.log_variances.detach(), torch.full((2,), -4.0)) and (decoder < 1).all()


def test_uncertainty_reaches_log_loss_on_constant_losses():
    tasks = ("a", "b", "c")
    method = build_weighting("uncertainty", tasks, dict.fromkeys(tasks, 1.0))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    constant = {"a": torch.tensor(0.5), "b": torch.tensor(2.0), "c": torch.tensor(8.0)}
    for _ in range(300):
        optimizer.zero_grad()
        method.combine_losses(constant).backward()
        optimizer.step()
    torch.testing.assert_close(method.log_variances.detach(), torch.log(torch.tensor([0.5, 2.0, 8.0])))
    assert method.weights() == pytest.approx({"a": 2.0, "b": 0.5, "c": 0.125}, rel=1e-5)


def _dwa_weights(previous: list[float], latest: list[float], temperature: float) -> list[float]:
    exps = [math.exp(b / a / temperature) for a, b in zip(previous, latest)]
    return [len(exps) * e / sum(exps) for e in exps]


def test_dwa_is_uniform_for_two_records_then_a_softmax_of_loss_ratios():
    tasks = ("a", "b", "c")
    dwa = build_weighting("dwa", tasks, dict.fromkeys(tasks, 1.0), {"temperature": 2.0})
    history = [[1.0, 2.0, 4.0], [0.5, 2.0, 5.0], [0.4, 1.0, 5.5]]
    assert dwa.weights() == dict.fromkeys(tasks, 1.0)
    dwa.after_step(_losses(*history[0], tasks=tasks))
    assert dwa.weights() == dict.fromkeys(tasks, 1.0)
    assert float(dwa.combine_losses(_losses(1.0, 2.0, 3.0, tasks=tasks))) == pytest.approx(6.0)
    dwa.after_step(_losses(*history[1], tasks=tasks))
    expected = _dwa_weights(history[0], history[1], 2.0)
    assert list(dwa.weights().values()) == pytest.approx(expected)
    combined = dwa.combine_losses(_losses(1.0, 2.0, 3.0, tasks=tasks))
    assert float(combined) == pytest.approx(expected[0] + 2 * expected[1] + 3 * expected[2])
    dwa.after_step(_losses(*history[2], tasks=tasks))
    assert list(dwa.weights().values()) == pytest.approx(_dwa_weights(history[1], history[2], 2.0))


def test_dwa_period_records_the_mean_loss_of_each_period():
    dwa = build_weighting("dwa", TWO, ONES, {"temperature": 1.0, "period": 2})
    steps = [(1.0, 2.0), (3.0, 2.0), (1.0, 1.0), (1.0, 2.0)]
    for values in steps[:3]:
        dwa.after_step(_losses(*values))
        assert dwa.weights() == ONES
    dwa.after_step(_losses(*steps[3]))
    assert list(dwa.weights().values()) == pytest.approx(_dwa_weights([2.0, 2.0], [1.0, 1.5], 1.0))


def test_famo_logit_update_follows_the_paper():
    lr, decay = 0.5, 0.1
    famo = build_weighting("famo", TWO, ONES, {"lr": lr, "decay": decay})
    history = [(1.0, 2.0), (0.5, 1.8), (0.4, 1.7)]
    famo.after_step(_losses(*history[0]))
    assert famo.logits.tolist() == [0.0, 0.0]
    logits = [0.0, 0.0]
    for before, after in zip(history, history[1:]):
        famo.after_step(_losses(*after))
        delta = [math.log(b) - math.log(a) for b, a in zip(before, after)]
        exps = [math.exp(x) for x in logits]
        z = [e / sum(exps) for e in exps]
        z_delta = sum(zi * di for zi, di in zip(z, delta))
        logits = [x - lr * (zi * (di - z_delta) + decay * x) for x, zi, di in zip(logits, z, delta)]
        torch.testing.assert_close(famo.logits, _vec(*logits))
    assert logits[0] < 0 < logits[1]  # task a fell faster, so b gains weight

    losses = _losses(0.4, 1.7, grad=True)
    famo.combine_losses(losses).backward()
    exps = [math.exp(x) for x in logits]
    z = [e / sum(exps) for e in exps]
    c = 1 / (z[0] / 0.4 + z[1] / 1.7)
    effective = [c * z[0] / 0.4, c * z[1] / 1.7]
    assert [float(losses[t].grad) for t in TWO] == pytest.approx(effective)
    assert list(famo.weights().values()) == pytest.approx(effective) and sum(effective) == pytest.approx(1.0)


def test_scaling_by_fixed_weights_multiplies_the_losses_first():
    fixed = {"a": 2.0, "b": 1.0}
    dwa = build_weighting("dwa", TWO, fixed, {"scale_by_fixed_weights": True, "temperature": 1.0})
    dwa.after_step(_losses(1.0, 2.0))
    dwa.after_step(_losses(0.5, 2.0))
    raw = _dwa_weights([1.0, 2.0], [0.5, 2.0], 1.0)  # ratios do not change when a loss is scaled
    assert list(dwa.weights().values()) == pytest.approx([2.0 * raw[0], raw[1]])
    pcgrad = build_weighting("pcgrad", TWO, fixed, {"scale_by_fixed_weights": True})
    shared, weights = pcgrad.combine_gradients(_grads((0.5, 0.0), (-1.0, 1.0)), _losses(1.0, 1.0))
    torch.testing.assert_close(shared, _vec(0.5, 1.5))  # the (1, 0) / (-1, 1) case below
    assert weights == fixed


# ------------------------------------------------------------------------------------- gradient level
def test_pcgrad_projects_conflicting_gradients():
    pcgrad = build_weighting("pcgrad", TWO, ONES)
    shared, weights = pcgrad.combine_gradients(_grads((1.0, 0.0), (-1.0, 1.0)), _losses(1.0, 1.0))
    # g1 - (g1.g2 / |g2|^2) g2 = (1, 0) + (-1, 1) / 2 = (0.5, 0.5); g2 - (g2.g1 / |g1|^2) g1 = (0, 1)
    torch.testing.assert_close(shared, _vec(0.5, 1.5))
    assert weights == ONES
    shared, _ = pcgrad.combine_gradients(_grads((1.0, 0.0), (1.0, 1.0)), _losses(1.0, 1.0))
    torch.testing.assert_close(shared, _vec(2.0, 1.0))


def test_cagrad_conflict_averse_direction_by_hand():
    grads, losses = _grads((1.0, 0.0), (-1.0, 1.0)), _losses(1.0, 1.0)
    # g0 = (0, 0.5); the dual 0.5 (1 - a) + 0.25 |(2a - 1, 1 - a)| over w = (a, 1 - a) is minimal at a = 1, so
    # d = g0 + 0.25 g1 = (0.25, 0.5), which improves both tasks by 0.25.
    shared, weights = build_weighting("cagrad", TWO, ONES, {"c": 0.5}).combine_gradients(grads, losses)
    torch.testing.assert_close(shared, _vec(0.25, 0.5))
    assert weights == ONES
    shared, _ = build_weighting("cagrad", TWO, ONES, {"c": 0.0}).combine_gradients(grads, losses)
    torch.testing.assert_close(shared, _vec(0.0, 0.5))
    # orthogonal equal gradients: w = (1/2, 1/2), g_w = g0, d = (1 + c) g0
    shared, _ = build_weighting("cagrad", TWO, ONES, {"c": 0.5}).combine_gradients(
        _grads((1.0, 0.0), (0.0, 1.0)), losses
    )
    torch.testing.assert_close(shared, _vec(0.75, 0.75))


def _simplex_points(generator: torch.Generator) -> torch.Tensor:
    """(N, 3) points of the 3-simplex: random interior ones and a fine grid of every edge."""
    inside = torch.distributions.Dirichlet(torch.ones(3, dtype=torch.float64)).sample((20000,))
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    edges = []
    for i in range(3):
        edge = torch.zeros(2001, 3, dtype=torch.float64)
        edge[:, i], edge[:, (i + 1) % 3] = t, 1 - t
        edges.append(edge)
    return torch.cat([inside, *edges])


@pytest.mark.parametrize("seed, tied", [(5, 3), (2, 2)])  # optimum inside the simplex / on an edge
def test_cagrad_maximises_the_worst_improvement_in_its_ball(seed, tied):
    tasks, c = ("a", "b", "c"), 0.6
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    method = build_weighting("cagrad", tasks, dict.fromkeys(tasks, 1.0), {"c": c})
    d, _ = method.combine_gradients(dict(zip(tasks, matrix)), _losses(1.0, 1.0, 1.0, tasks=tasks))
    g0 = matrix.mean(0)
    radius = c * float(g0.norm())
    assert float((d - g0).norm()) <= radius * (1 + 1e-9)
    improvements = matrix @ d
    worst = float(improvements.min())
    assert int(((improvements - worst).abs() < 1e-9).sum()) == tied
    # primal: no point of the ball does better
    directions = torch.randn(20000, 4, generator=generator, dtype=torch.float64)
    ball = g0 + radius * directions / directions.norm(dim=1, keepdim=True)
    assert float((ball @ matrix.T).min(1).values.max()) <= worst + 1e-12
    # dual: every simplex point bounds the worst improvement from above (weak duality), the optimum closely
    w = _simplex_points(generator)
    dual = w @ matrix @ g0 + radius * (w @ matrix).norm(dim=1)
    assert worst <= float(dual.min()) + 1e-12 and float(dual.min()) - worst < 1e-4


def test_nashmtl_orthogonal_gradients_get_inverse_norms():
    tasks = ("a", "b", "c")
    method = build_weighting("nashmtl", tasks, dict.fromkeys(tasks, 1.0))
    grads = _grads((2.0, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 1.0), tasks=tasks)
    shared, weights = method.combine_gradients(grads, _losses(1.0, 1.0, 1.0, tasks=tasks))
    assert list(weights.values()) == pytest.approx([0.5, 2.0, 1.0], rel=1e-8)
    torch.testing.assert_close(shared, _vec(1.0, 1.0, 1.0))
    assert method.weights() == pytest.approx(weights)


def test_nashmtl_solves_the_bargaining_equations():
    method = build_weighting("nashmtl", TWO, ONES)
    _, weights = method.combine_gradients(_grads((1.0, 0.0), (1.0, 1.0)), _losses(1.0, 1.0))
    alpha = _vec(*weights.values())
    gram = torch.tensor([[1.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(gram @ alpha, 1 / alpha, rtol=1e-8, atol=0)
    # a (a + b) = 1, b (a + 2 b) = 1  =>  a^4 - 4 a^2 + 2 = 0 with a < 1, b = 1 / a - a
    a = math.sqrt(2 - math.sqrt(2))
    assert list(weights.values()) == pytest.approx([a, 1 / a - a], rel=1e-8)
    _, scaled = method.combine_gradients(_grads((4.0, 0.0), (4.0, 4.0)), _losses(1.0, 1.0))
    assert list(scaled.values()) == pytest.approx([a / 4, (1 / a - a) / 4], rel=1e-8)


def test_gradnorm_first_step_sets_initial_losses_and_balances_norms():
    method = build_weighting("gradnorm", TWO, ONES, {"alpha": 1.5, "lr": 0.1})
    grads = _grads((3.0, 0.0, 0.0), (0.0, 4.0, 0.0))
    shared, weights = method.combine_gradients(grads, _losses(2.0, 1.0))
    torch.testing.assert_close(shared, _vec(3.0, 4.0, 0.0))
    assert weights == ONES
    assert method.initial_losses.tolist() == [2.0, 1.0]
    # ratios 1: target = mean(3, 4) = 3.5; w = (1 + 0.1 * 3, 1 - 0.1 * 4) = (1.3, 0.6), renormalised to sum 2
    assert list(method.weights().values()) == pytest.approx([2.6 / 1.9, 1.2 / 1.9])


def test_gradnorm_update_by_hand():
    alpha, lr = 1.5, 0.1
    method = build_weighting("gradnorm", TWO, ONES, {"alpha": alpha, "lr": lr})
    method.load_state_dict(
        {"task_weights": _vec(1.2, 0.8), "initial_losses": _vec(2.0, 1.0), "steps": torch.tensor(1)}
    )
    grads = _grads((3.0, 0.0, 0.0), (0.0, 4.0, 0.0))
    shared, weights = method.combine_gradients(grads, _losses(1.0, 0.8))
    torch.testing.assert_close(shared, _vec(3.6, 3.2, 0.0))
    assert weights == pytest.approx({"a": 1.2, "b": 0.8})
    weighted_norms = [1.2 * 3.0, 0.8 * 4.0]
    ratios = [1.0 / 2.0, 0.8 / 1.0]
    mean_norm, mean_ratio = sum(weighted_norms) / 2, sum(ratios) / 2
    targets = [mean_norm * (r / mean_ratio) ** alpha for r in ratios]
    assert weighted_norms[0] > targets[0] and weighted_norms[1] < targets[1]
    stepped = [1.2 - lr * 3.0, 0.8 + lr * 4.0]
    assert list(method.weights().values()) == pytest.approx([2 * w / sum(stepped) for w in stepped])
    assert list(method.weights().values()) == pytest.approx([6 / 7, 8 / 7])


def test_gradnorm_norm_params_selects_named_shared_parameters():
    method = build_weighting("gradnorm", TWO, ONES, {"lr": 0.1, "norm_params": "late"})
    grads = _grads((3.0, 0.0, 1.0), (0.0, 4.0, 2.0))
    with pytest.raises(WeightingError, match="needs the shared parameters' names"):
        method.combine_gradients(grads, _losses(1.0, 1.0))
    with pytest.raises(WeightingError, match="matches no shared parameter"):
        method.bind_shared_parameters(["early.w", "middle.w"], [2, 1])
    method.bind_shared_parameters(["early.w", "late.w"], [2, 1])
    shared, _ = method.combine_gradients(grads, _losses(1.0, 1.0))
    torch.testing.assert_close(shared, _vec(3.0, 4.0, 3.0))
    # norms on the last element only: (1, 2), target 1.5: w = (1 + 0.1, 1 - 0.2), renormalised
    assert list(method.weights().values()) == pytest.approx([2.2 / 1.9, 1.6 / 1.9])


# ------------------------------------------------------------------------------------------- resume
def _step(method, k: int) -> torch.Tensor:
    """One step of deterministic inputs; everything the method produced, flat."""
    generator = torch.Generator().manual_seed(100 + k)
    losses = {t: torch.rand((), generator=generator, dtype=torch.float64) + 0.5 for t in method.tasks}
    if method.level == "loss":
        leaves = {t: v.clone().requires_grad_() for t, v in losses.items()}
        total = method.combine_losses(leaves)
        params = list(method.parameters())
        grads = torch.autograd.grad(total, [*leaves.values(), *params])
        with torch.no_grad():
            for p, g in zip(params, grads[len(leaves) :]):
                p -= 0.1 * g
        produced = torch.stack([total.detach(), *grads[: len(leaves)]])
    else:
        grads = {t: torch.randn(5, generator=generator, dtype=torch.float64) for t in method.tasks}
        shared, weights = method.combine_gradients(grads, losses)
        produced = torch.cat([shared, _vec(*weights.values())])
    method.after_step(losses)
    return torch.cat([produced.double(), _vec(*method.weights().values())])


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_state_dict_round_trip_resumes_exactly(name):
    tasks, fixed = ("a", "b", "c"), {"a": 2.0, "b": 1.0, "c": 0.5}
    options = {"period": 2} if name == "dwa" else {}
    run = build_weighting(name, tasks, fixed, options)
    for k in range(4):
        _step(run, k)
    buffer = io.BytesIO()
    torch.save(run.state_dict(), buffer)
    buffer.seek(0)
    resumed = build_weighting(name, tasks, fixed, options)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    fresh = build_weighting(name, tasks, fixed, options)
    same_as_fresh = True
    for k in range(4, 7):
        expected = _step(run, k)
        assert torch.equal(_step(resumed, k), expected)
        same_as_fresh &= torch.equal(_step(fresh, k), expected)
    assert same_as_fresh == (name in ("fixed", "cagrad", "nashmtl"))  # stateful methods need their state


# ------------------------------------------------------------------------------------ gradient plumbing
class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(3, 4)
        self.unused = nn.Linear(2, 2)
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.tanh(self.trunk(x))
        return {t: ((self.heads[t](features).squeeze(1) - y[:, i]) ** 2).mean() for i, t in enumerate(TWO)}

    def shared(self) -> list[nn.Parameter]:
        return [*self.trunk.parameters(), *self.unused.parameters()]

    def specific(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=generator)
    return x, torch.stack([x.sum(1), -x[:, 0]], dim=1)


def test_flat_task_gradients_zeros_unscaling_and_non_finite():
    model, (x, y) = _TwoHeads(), _batch()
    losses = model.losses(x, y)
    params = [*model.trunk.parameters(), *model.heads["a"].parameters()]
    grads = flat_task_gradients(losses, params)
    trunk_size = sum(p.numel() for p in model.trunk.parameters())
    assert set(grads) == set(TWO) and grads["a"].shape == (trunk_size + 5,)
    assert torch.count_nonzero(grads["b"][trunk_size:]) == 0  # task b does not reach head a
    reference = torch.autograd.grad(losses["a"], params, retain_graph=True)
    torch.testing.assert_close(grads["a"], torch.cat([g.reshape(-1) for g in reference]))
    scaled = flat_task_gradients({t: 8.0 * v for t, v in losses.items()}, params, grad_scale=8.0)
    torch.testing.assert_close(scaled["b"], grads["b"])
    assert flat_task_gradients({"a": losses["a"] * math.inf, "b": losses["b"]}, params) is None


def test_assign_flat_gradient_writes_scales_and_accumulates():
    params = [nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(3))]
    flat = torch.arange(7.0)
    assign_flat_gradient(params, flat, scale=2.0)
    torch.testing.assert_close(params[0].grad, torch.tensor([[0.0, 2.0], [4.0, 6.0]]))
    torch.testing.assert_close(params[1].grad, torch.tensor([8.0, 10.0, 12.0]))
    assign_flat_gradient(params, flat, accumulate=True)
    torch.testing.assert_close(params[1].grad, torch.tensor([12.0, 15.0, 18.0]))
    assign_flat_gradient(params, flat)
    torch.testing.assert_close(params[1].grad, torch.tensor([4.0, 5.0, 6.0]))
    with pytest.raises(WeightingError, match="a flat gradient of 7 elements is needed"):
        assign_flat_gradient(params, torch.zeros(6))


@pytest.mark.parametrize("kernel", [{"fused": True}, {"foreach": True}])
def test_gradient_level_weighting_trains_a_channels_last_network_like_a_contiguous_one(kernel):
    """Written gradients keep each parameter's memory format: the fused CPU optimisers read a gradient stored in
    another layout than its parameter in the parameter's order, i.e. update the wrong elements (silently)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    nets = []
    for layout in (torch.channels_last, torch.contiguous_format):
        torch.manual_seed(1)
        nets.append(nn.Conv2d(3, 4, 3).to(memory_format=layout))
    for net in nets:
        opt = torch.optim.Adam(net.parameters(), lr=0.1, **kernel)
        method = build_weighting("pcgrad", TWO, ONES)
        for _ in range(2):
            out = net(x.contiguous(memory_format=torch.channels_last))
            weighted_backward(method, {"a": out[:, :2].square().mean(), "b": out[:, 2:].mean()},
                              [net.weight], [net.bias])
            assert net.weight.grad.stride() == net.weight.stride()
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(nets[0].weight, nets[1].weight)


def test_all_reduce_is_a_no_op_without_a_process_group():
    tensors = [torch.arange(3.0), torch.ones(2, 2)]
    all_reduce_mean_(tensors)
    assert tensors[0].tolist() == [0.0, 1.0, 2.0] and tensors[1].sum() == 4
    losses = rank_mean_losses({"b": torch.tensor(2.0, requires_grad=True), "a": torch.tensor(1.0)})
    assert list(losses) == ["a", "b"] and not losses["b"].requires_grad and float(losses["b"]) == 2.0


def test_weighted_backward_writes_combined_and_weighted_head_gradients():
    model, (x, y) = _TwoHeads(), _batch()
    method = build_weighting("nashmtl", TWO, ONES)
    shared_ref = flat_task_gradients(model.losses(x, y), list(model.trunk.parameters()))
    expected_shared, weights = method.combine_gradients(shared_ref, {t: torch.tensor(1.0) for t in TWO})
    for p in model.specific():
        p.grad = torch.ones_like(p)  # existing gradients are added to, like Tensor.backward()
    returned = weighted_backward(method, model.losses(x, y), model.shared(), model.specific())
    assert returned == pytest.approx(weights)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in model.trunk.parameters()]), expected_shared)
    assert all(p.grad is None for p in model.unused.parameters())  # reached by no task: left alone
    for t in TWO:
        own = flat_task_gradients(model.losses(x, y), list(model.heads[t].parameters()))[t]
        written = torch.cat([p.grad.reshape(-1) for p in model.heads[t].parameters()])
        torch.testing.assert_close(written, 1.0 + weights[t] * own)
    with pytest.raises(WeightingError, match="both shared and task-specific"):
        weighted_backward(method, model.losses(x, y), model.shared(), [*model.specific(), model.trunk.bias])


def test_weighted_backward_binds_named_shared_parameters():
    model, (x, y) = _TwoHeads(), _batch()
    named = dict(model.trunk.named_parameters())
    method = build_weighting("gradnorm", TWO, ONES, {"norm_params": "bias"})
    weighted_backward(method, model.losses(x, y), named, model.specific())
    reference = build_weighting("gradnorm", TWO, ONES, {"norm_params": "bias"})
    reference.bind_shared_parameters(list(named), [p.numel() for p in named.values()])
    losses = model.losses(x, y)
    reference.combine_gradients(flat_task_gradients(losses, list(named.values())), rank_mean_losses(losses))
    assert method.weights() == pytest.approx(reference.weights())
    assert method.weights() != pytest.approx(ONES)


@pytest.mark.parametrize("name", ["pcgrad", "nashmtl"])
def test_weighted_backward_with_grad_scaler_gives_the_unscaled_gradient(name):
    x, y = _batch()
    plain, scaled = _TwoHeads(), _TwoHeads()
    weighted_backward(build_weighting(name, TWO, ONES), plain.losses(x, y), plain.shared(), plain.specific())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = torch.optim.SGD(scaled.parameters(), lr=0.1)
    method = build_weighting(name, TWO, ONES)
    weighted_backward(method, scaled.losses(x, y), scaled.shared(), scaled.specific(), scaler)
    reached = [(p, q) for p, q in zip(plain.parameters(), scaled.parameters()) if p.grad is not None]
    assert len(reached) == 6
    for p, q in reached:
        torch.testing.assert_close(q.grad, 1024.0 * p.grad)
    scaler.unscale_(optimizer)
    for p, q in reached:
        torch.testing.assert_close(q.grad, p.grad)
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 1024.0


def test_non_finite_gradients_skip_the_scaler_step_or_raise():
    model, (x, y) = _TwoHeads(), _batch()
    method = build_weighting("pcgrad", TWO, ONES)
    state = method.generator_state.clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    losses = model.losses(x, y)
    losses["a"] = losses["a"] * math.inf
    weighted_backward(method, losses, model.shared(), model.specific(), scaler)
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scaler.get_scale() == 512.0 and torch.equal(method.generator_state, state)
    losses = model.losses(x, y)
    losses["a"] = losses["a"] * math.inf
    with pytest.raises(NonFiniteGradientError, match=r"task\(s\) \['a'\]: lower the learning rates"):
        weighted_backward(method, losses, model.shared(), model.specific())


@pytest.mark.parametrize("name", ["uncertainty", "pcgrad"])
def test_a_training_step_logs_the_task_weights(name, tmp_path):
    cfg = case_config(plan.SUBJECTS["supervised"], plan.VARIANTS["default"], (32, 64), 2, torch.device("cpu"),
                      tmp_path, ["model.backbone=resnet18", "model.decoder_channels=[8,8,16,16,16]",
                                 "model.aspp_rates=[1,2,3]", f"tasks.weighting={{name: {name}}}"])
    engine = Engine(cfg, tmp_path, torch.device("cpu"), show_progress=False)
    scenario = random_data.with_random_data(scenario_class(cfg.scenario))(cfg, engine, True)
    engine.attach(scenario)
    out = scenario.train_step(next(scenario.train_batches(0)), engine)
    logged = {key: float(value) for key, value in out.terms.items() if key.startswith("weights/")}
    assert set(logged) == {"weights/depth", "weights/semseg"}
    for task, loss in scenario._step_losses.items():
        assert float(out.terms[f"{task}/weighted"]) == pytest.approx(logged[f"weights/{task}"] * float(loss))


@pytest.mark.parametrize("experiment", ["sd_mteb", "sd_none"])
def test_every_parameter_several_tasks_reach_is_balanced(experiment, tmp_path):
    """Gradient-level methods balance the gradients of every parameter that more than one task's loss reaches:
    with mTEB also the decoder blocks that feed the exchange block (they got the plain sum of the task gradients,
    conflicting ones included, before); the heads and the exchange modules, which one task reaches, are not."""
    subject = plan.Subject(experiment, f"experiments/supervised/toycity/{experiment}.yaml", toycity=True)
    cfg = case_config(subject, plan.VARIANTS["default"], (32, 64), 2, torch.device("cpu"), tmp_path,
                      ["model.backbone=resnet18", "model.decoder_channels=[8,8,16,16,16]", "model.aspp_rates=[1,2,3]",
                       "tasks.weighting={name: pcgrad}"])
    engine = Engine(cfg, tmp_path, torch.device("cpu"), show_progress=False)
    scenario = random_data.with_random_data(scenario_class(cfg.scenario))(cfg, engine, True)
    engine.attach(scenario)
    batch = next(scenario.train_batches(0))
    losses, _ = task_losses(scenario.model(batch.image), scenario.tasks, batch)
    shared, specific = scenario._shared_and_specific(losses)
    params = [*shared.values(), *specific]
    reach = torch.zeros(len(params), dtype=torch.int64)
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        reach += torch.tensor([g is not None for g in grads])
    backbone = sum(name.startswith("backbone.") for name in shared)
    assert (reach[backbone:len(shared)] == 2).all() and (reach[len(shared):] <= 1).all()
    decoders = sum(name.startswith("decoders.") for name in shared)
    assert (decoders > 0) == (experiment == "sd_mteb") and not any(n.startswith("exchange.") for n in shared)
