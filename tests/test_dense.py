"""Dense output: ``solve(..., dense=True).evaluate(t)`` and ``odeint_dense``, checked against
closed forms, the interpolant's convergence order and ``gradcheck`` in float64."""

from __future__ import annotations

import math

import pytest
import torch

import solvers

F64 = torch.float64


def decay(t, y):
    return -y


def test_evaluate_between_outputs_matches_exp():
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    sol = solvers.solve(decay, y0, torch.tensor([0.0, 3.0], dtype=F64), rtol=1e-10, atol=1e-12, dense=True)
    tq = torch.linspace(0.0, 3.0, 37, dtype=F64)
    err = (sol.evaluate(tq) - torch.exp(-tq)[:, None] * y0).abs().max()
    assert float(err) < 1e-10
    assert sol.evaluate(1.5).shape == (2,)
    # the outputs of the same solve are untouched by recording
    plain = solvers.solve(decay, y0, torch.linspace(0.0, 3.0, 4, dtype=F64), rtol=1e-10, atol=1e-12)
    again = solvers.solve(decay, y0, torch.linspace(0.0, 3.0, 4, dtype=F64), rtol=1e-10, atol=1e-12, dense=True)
    assert torch.equal(plain.ys, again.ys) and plain.stats.n_f_evals == again.stats.n_f_evals


@pytest.mark.parametrize("method,order", [("rk4", 4), ("euler", 1), ("midpoint", 2)])
def test_interpolant_order_on_fixed_steps(method, order):
    """At mid-step points the error falls as h^p with p = min(method order, 4) (cubic Hermite)."""
    y0 = torch.ones(1, dtype=F64)
    errs = []
    for h in (0.1, 0.05, 0.025):
        sol = solvers.solve(decay, y0, torch.tensor([0.0, 1.0], dtype=F64), method=method, options=dict(step_size=h), dense=True)
        tq = torch.arange(0.5 * h, 1.0, h, dtype=F64)
        errs.append(float((sol.evaluate(tq)[:, 0] - torch.exp(-tq)).abs().max()))
    slopes = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert min(slopes) > min(order, 4) - 0.3, slopes


def test_evaluate_is_differentiable():
    """gradcheck on a fixed grid (the discretisation does not move with the inputs)."""
    t_q = torch.tensor([0.13, 0.77, 0.95], dtype=F64)  # inside the span also after the gradcheck nudge

    def fn(y0, k, tq):
        sol = solvers.solve(lambda t, y: -k * y + torch.sin(t), y0, torch.tensor([0.0, 1.0], dtype=F64), method="rk4", options=dict(step_size=0.1), dense=True)
        return sol.evaluate(tq)

    y0 = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
    k = torch.tensor(0.7, dtype=F64, requires_grad=True)
    tq = t_q.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (y0, k, tq))


def test_adaptive_gradients_match_closed_form():
    k = torch.tensor(0.8, dtype=F64, requires_grad=True)
    y0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    sol = solvers.solve(lambda t, y: -k * y, y0, torch.tensor([0.0, 2.0], dtype=F64), rtol=1e-10, atol=1e-12, dense=True)
    tq = torch.tensor(1.3, dtype=F64, requires_grad=True)
    sol.evaluate(tq).sum().backward()
    e = math.exp(-0.8 * 1.3)
    assert abs(float(y0.grad) - e) < 1e-9
    assert abs(float(k.grad) + 1.3 * 2.0 * e) < 1e-8
    assert abs(float(tq.grad) + 0.8 * 2.0 * e) < 1e-8  # d y / d t = f


def test_tuple_state_reverse_time_and_odeint_dense():
    f = lambda t, s: (s[1], -s[0])  # noqa: E731
    y0 = (torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64))
    sol = solvers.solve(f, y0, torch.tensor([0.0, -2.0], dtype=F64), rtol=1e-10, atol=1e-12, dense=True)
    x, v = sol.evaluate(torch.tensor([-0.5, -1.7], dtype=F64))
    tq = torch.tensor([-0.5, -1.7], dtype=F64)
    assert torch.allclose(x, torch.cos(tq), atol=1e-9) and torch.allclose(v, -torch.sin(tq), atol=1e-9)
    dense = solvers.odeint_dense(decay, torch.ones(3, dtype=F64), torch.tensor(0.0, dtype=F64), torch.tensor(2.0, dtype=F64), rtol=1e-10, atol=1e-12)
    assert float((dense(torch.tensor(1.25, dtype=F64)) - math.exp(-1.25)).abs().max()) < 1e-10


def test_evaluate_stops_at_a_terminal_event_and_freezes_stopped_samples():
    hs = torch.tensor([1.0, 2.0, 30.0], dtype=F64)
    y0 = torch.stack([hs, torch.zeros(3, dtype=F64)], dim=1)
    f = lambda t, y: torch.stack([y[:, 1], -9.8 * torch.ones_like(y[:, 1])], dim=1)  # noqa: E731
    sol = solvers.solve(f, y0, torch.tensor([0.0, 1.0], dtype=F64), events=lambda t, y: y[:, 0], rtol=1e-10, atol=1e-12, dense=True)
    y = sol.evaluate(torch.tensor(0.9, dtype=F64))
    assert torch.allclose(y[:2], sol.event_y[:2])  # stopped at their impacts (0.45, 0.64)
    assert abs(float(y[2, 0]) - (30.0 - 0.5 * 9.8 * 0.81)) < 1e-9
    unb = solvers.solve(lambda t, y: torch.stack([y[1], -9.8 * torch.ones_like(y[1])]), torch.tensor([1.0, 0.0], dtype=F64),
                        torch.tensor([0.0, 1.0], dtype=F64), events=lambda t, y: y[0], dense=True)
    with pytest.raises(ValueError, match="outside the solved span"):
        unb.evaluate(0.5)  # after the terminal event at 0.45


def test_errors_name_the_fix():
    sol = solvers.solve(decay, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), dense=True)
    with pytest.raises(ValueError, match=r"outside the solved span \[0, 1\]"):
        sol.evaluate(torch.tensor([0.5, 1.5], dtype=F64))
    with pytest.raises(ValueError, match="dense=True"):
        solvers.solve(decay, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)).evaluate(0.5)
    with pytest.raises(TypeError, match="dense"):
        solvers.solve(decay, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), dense=1)
    with pytest.raises(ValueError, match=r"shape \[B, Q\]"):  # per-sample grids: tests/test_grids_dense.py
        solvers.solve(decay, torch.ones(2, 1, dtype=F64), torch.tensor([[0.0, 1.0], [0.0, 2.0]], dtype=F64), dense=True).evaluate(0.5 * torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="own loop"):
        solvers.solve(decay, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="scipy_solver", dense=True)
