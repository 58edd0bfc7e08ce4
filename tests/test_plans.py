"""solve's cache of plain fixed-step plans (solvers._plans): a repeated plain solve gives the
uncached solve's bits, stats and errors, and anything that changed is solved afresh."""

import gc

import pytest
import torch

import solvers
from solvers import _api, _plans

from _checks import count_calls

D = torch.float64


@pytest.fixture(autouse=True)
def _fresh_plans():
    _plans.clear()
    yield
    _plans.clear()


def _net(d=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, d)).to(D)


def _count_problems(monkeypatch):
    return count_calls(monkeypatch, _api, "make_problem")


def _uncached(*args, **kw):
    _plans.clear()
    try:
        return solvers.solve(*args, **kw)
    finally:
        _plans.clear()


def test_repeat_runs_the_plan_with_the_same_bits_stats_and_gradients(monkeypatch):
    net = _net()
    f = lambda t, y: net(y) * (1.0 + t)  # noqa: E731  (time-dependent: the stage times matter)
    t = torch.tensor([0.0, 0.7], dtype=D)
    opts = dict(step_size=0.1)
    calls = _count_problems(monkeypatch)
    solvers.solve(f, torch.randn(4, 3, dtype=D), t, method="euler", options=opts)
    y0 = torch.randn(4, 3, dtype=D, requires_grad=True)
    sol = solvers.solve(f, y0, t, method="euler", options=dict(step_size=0.1))  # equal options, new dict
    assert len(calls) == 1, "the repeat must run from the kept plan"
    ref = _uncached(f, y0, t, method="euler", options=opts)
    assert torch.equal(sol.ys, ref.ys) and sol.ts is ref.ts
    assert sol.stats == ref.stats and sol.stats.n_f_evals == 7
    assert sol.status is ref.status and sol.message == ref.message
    g = torch.randn(4, 3, dtype=D)
    assert torch.equal(torch.autograd.grad(sol.ys[-1], y0, g)[0], torch.autograd.grad(ref.ys[-1], y0, g)[0])
    assert torch.equal(solvers.odeint(f, y0, t, method="euler", options=opts), ref.ys)


def test_repeat_gradcheck():
    net = _net(2)
    f = lambda t, y: net(y)  # noqa: E731
    t = torch.tensor([0.0, 0.5], dtype=D)
    solvers.odeint(f, torch.randn(2, 2, dtype=D), t, method="euler", options=dict(step_size=0.125))
    y0 = torch.randn(2, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda y: solvers.odeint(f, y, t, method="euler", options=dict(step_size=0.125))[-1], (y0,))


@pytest.mark.parametrize("change", ["t_in_place", "new_t", "options", "shape", "dtype", "method", "tol", "func"])
def test_anything_changed_is_solved_afresh(monkeypatch, change):
    net = _net()
    f = lambda t, y: net(y) * (1.0 + t)  # noqa: E731
    t = torch.tensor([0.0, 0.7], dtype=D)
    y0 = torch.randn(4, 3, dtype=D)
    kw = dict(method="euler", options=dict(step_size=0.1))
    solvers.solve(f, y0, t, **kw)
    if change == "t_in_place":
        t[1] = 0.9
    elif change == "new_t":
        t = torch.tensor([0.0, 0.7], dtype=D)
    elif change == "options":
        kw["options"] = dict(step_size=0.05)
    elif change == "shape":
        y0 = torch.randn(5, 3, dtype=D)
    elif change == "dtype":
        net, y0 = net.float(), y0.float()
    elif change == "method":
        kw["method"] = "rk4"
    elif change == "tol":
        kw["rtol"] = 1e-3
    else:
        f = lambda t, y: -y  # noqa: E731
    calls = _count_problems(monkeypatch)
    sol = solvers.solve(f, y0, t, **kw)
    assert len(calls) == 1
    ref = _uncached(f, y0, t, **kw)
    assert torch.equal(sol.ys, ref.ys) and sol.stats == ref.stats


def test_the_fields_output_is_still_checked():
    state = {"out": None}
    f = lambda t, y: -y if state["out"] is None else state["out"]  # noqa: E731
    t = torch.tensor([0.0, 0.3], dtype=D)
    y0 = torch.randn(2, 3, dtype=D)
    solvers.odeint(f, y0, t, method="euler", options=dict(step_size=0.1))
    for bad in (torch.zeros(2, 3, dtype=torch.float32), torch.zeros(2, 4, dtype=D), "no tensor"):
        state["out"] = bad
        with pytest.raises((TypeError, ValueError)) as cached:
            solvers.odeint(f, y0, t, method="euler", options=dict(step_size=0.1))
        with pytest.raises(type(cached.value)) as fresh:
            _uncached(f, y0, t, method="euler", options=dict(step_size=0.1))
        assert str(cached.value) == str(fresh.value)


def test_a_non_finite_repeat_fails_as_an_uncached_solve():
    scale = {"s": 1.0}
    f = lambda t, y: y * scale["s"]  # noqa: E731
    t = torch.tensor([0.0, 0.3], dtype=D)
    y0 = torch.ones(2, 3, dtype=D)
    solvers.odeint(f, y0, t, method="euler", options=dict(step_size=0.1))
    scale["s"] = float("inf")
    with pytest.raises(solvers.NonFiniteStateError) as cached:
        solvers.odeint(f, y0, t, method="euler", options=dict(step_size=0.1))
    with pytest.raises(solvers.NonFiniteStateError) as fresh:
        _uncached(f, y0, t, method="euler", options=dict(step_size=0.1))
    assert str(cached.value) == str(fresh.value)
    sol = solvers.solve(f, y0, t, method="euler", options=dict(step_size=0.1), raise_on_failure=False)
    assert sol.status is solvers.Status.NON_FINITE
    # with the check switched off, the repeat returns the state as the uncached solve does
    solvers.odeint(f, y0, t, method="euler", options=dict(step_size=0.1, check_finite=False))
    out = solvers.odeint(f, y0, t, method="euler", options=dict(step_size=0.1, check_finite=False))
    assert torch.isinf(out[-1]).all()


def test_plans_do_not_keep_functions_or_times_alive():
    net = _net()
    f = lambda t, y: net(y)  # noqa: E731
    t = torch.tensor([0.0, 0.3], dtype=D)
    solvers.odeint(f, torch.randn(2, 3, dtype=D), t, method="euler", options=dict(step_size=0.1))
    assert len(_plans._PLANS) == 1
    del f
    gc.collect()
    assert len(_plans._PLANS) == 0


@pytest.mark.parametrize("case", ["t_list", "t_requires_grad", "decreasing_t", "tuple_state", "adjoint", "every_output"])
def test_not_cached(case):
    net = _net()
    f = lambda t, y: net(y)  # noqa: E731
    t = torch.tensor([0.0, 0.3], dtype=D)
    y0 = torch.randn(2, 3, dtype=D)
    kw = dict(method="euler", options=dict(step_size=0.1))
    if case == "t_list":
        t = [0.0, 0.3]
    elif case == "t_requires_grad":
        t = t.clone().requires_grad_(True)
    elif case == "decreasing_t":
        t = torch.tensor([0.3, 0.0], dtype=D)
    elif case == "tuple_state":
        y0 = (y0, y0.clone())
        f = lambda t, y: (-y[0], -y[1])  # noqa: E731
    elif case == "adjoint":
        kw["gradient"] = "adjoint"
    else:
        t = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=D)
    solvers.solve(f, y0, t, **kw)
    assert len(_plans._PLANS) == 0
