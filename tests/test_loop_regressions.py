"""Regression tests for loop-side failures of issue 10: a later wrong-shaped field output,
a huge fixed grid refused before it is built, adjoint settings validated at the forward
call."""

from __future__ import annotations

import pytest
import torch

import solvers

F64 = torch.float64
T01 = torch.tensor([0.0, 1.0], dtype=F64)


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", dict(step_size=0.1))])
def test_later_wrong_shape_is_caught(method, options):
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return -y if calls[0] < 4 else (-y).sum().reshape(1)  # (1,) would broadcast silently

    with pytest.raises(ValueError, match=r"returned shape \(1,\) for a state of shape \(3,\)"):
        solvers.odeint(f, torch.ones(3, dtype=F64), T01, method=method, options=options)


def test_tiny_step_size_refused_without_building_the_grid():
    # 1e300 steps: building the grid first would exhaust memory; it must fail at once
    with pytest.raises(solvers.MaxStepsError, match="max_num_steps=10"):
        solvers.solve(lambda t, y: -y, torch.ones(3, dtype=F64), T01, method="euler", options=dict(step_size=1e-300, max_num_steps=10))


@pytest.mark.parametrize(
    "kw, exc, pattern",
    [
        (dict(adjoint_method="nope"), ValueError, "unknown method 'nope'"),
        (dict(adjoint_method=3), TypeError, "`adjoint_method` must be a method name"),
        (dict(adjoint_rtol=-1.0), ValueError, "`adjoint_rtol` must be finite and non-negative"),
        (dict(adjoint_atol=float("nan")), ValueError, "`adjoint_atol` must be finite"),
        (dict(adjoint_options=5), TypeError, "`adjoint_options` must be a dict"),
    ],
)
def test_adjoint_settings_checked_at_the_forward_call(kw, exc, pattern):
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    with pytest.raises(exc, match=pattern):
        solvers.odeint_adjoint(lambda t, y: -y, y0, T01, adjoint_params=(), **kw)  # no backward needed
