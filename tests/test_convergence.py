"""Empirical order of convergence of every registered method, run with fixed steps.

Problem: the non-autonomous linear ODE ``y' = (1 + t) A y`` on ``[0, T]`` in float64, exact
solution ``y(t) = expm((t + t^2/2) A) y0`` (``A`` commutes with itself at every time), so both the
tableau weights and the stage times ``c`` are exercised.

Adaptive methods are run with fixed steps through the public API:
``options=dict(first_step=h, min_step=h, max_step=h)`` with ``rtol = atol = 1e10``: every
step is accepted, the controller's proposal is clipped back to ``h``, and the loop lands
exactly on ``t1`` (``h`` a power of two so the step times are exact). That propagates the
higher-order solution, whose order is the declared ``order``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import solvers

A = torch.tensor([[-0.5, 1.0, 0.0], [-1.0, -0.5, 0.3], [0.0, -0.3, -0.2]], dtype=torch.float64)
Y0 = torch.tensor([1.0, 0.5, -0.25], dtype=torch.float64)


def field(t, y):
    return (1 + t) * (A @ y)


def exact(t: float) -> torch.Tensor:
    return torch.linalg.matrix_exp((t + t * t / 2) * A) @ Y0


METHODS = sorted(n for n, cls in solvers.METHODS.items() if not getattr(cls, "external", False))

# (T, step counts) per order: errors stay above roundoff (> 1e-13) and in the asymptotic
# range. Tsit5's leading error constants are tiny, so its h^6 term fades only for small h;
# dopri8 needs a longer span to keep its errors measurable.
_STEPS = {1: (2.0, [32, 64, 128, 256]), 2: (2.0, [16, 32, 64, 128]), 3: (2.0, [16, 32, 64, 128]), 4: (2.0, [16, 32, 64, 128]), 5: (2.0, [32, 64, 128, 256]), 6: (4.0, [16, 32, 64]), 8: (4.0, [16, 32, 64])}
# implicit methods with small error constants (Gauss-Legendre, Radau IIA) reach round-off
# sooner: per-method step counts where the defaults would
_STEPS_FOR = {"radauIIA5": (4.0, [8, 16, 32, 64]), "radau5": (4.0, [8, 16, 32, 64]), "gl4": (4.0, [8, 16, 32, 64])}


def fixed_step_error(name: str, n: int, T: float) -> float:
    h = T / n
    t = torch.tensor([0.0, T], dtype=torch.float64)
    cls = solvers.METHODS[name]
    # implicit stages solved to near round-off (their default tolerance follows rtol/atol)
    root = {k: v for k, v in (("root_rtol", 1e-14), ("root_atol", 1e-16)) if k in cls.option_names}
    extra = dict(getattr(cls, "convergence_options", {}), **root)
    if cls.adaptive:
        opts = dict(first_step=h, min_step=h, max_step=h, **extra)
        sol = solvers.solve(field, Y0, t, method=name, rtol=1e10, atol=1e10, options=opts)
        assert sol.stats.n_accepted == n and sol.stats.n_rejected == 0
    else:
        sol = solvers.solve(field, Y0, t, method=name, options=dict(step_size=h, **extra))
        assert sol.stats.n_steps == n
    return float((sol.ys[-1] - exact(T)).abs().max())


@pytest.mark.parametrize("name", METHODS)
def test_empirical_order(name):
    order = solvers.METHODS[name].order
    T, steps = _STEPS_FOR.get(name, _STEPS[order])
    errs = [fixed_step_error(name, n, T) for n in steps]
    assert all(e > 1e-13 for e in errs), f"{name}: errors {errs} reached roundoff; pick larger steps"
    slope = np.polyfit(np.log([T / n for n in steps]), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.3, f"{name}: observed order {slope:.2f}, declared {order} (errors {errs})"


@pytest.mark.parametrize("name", [n for n in METHODS if solvers.METHODS[n].adaptive])
def test_dense_output_converges(name):
    """Output times strictly inside steps: the interpolated error converges with order
    ``min(order, 4)`` at least (Hermite is third order locally, the dense outputs of
    bosh3/dopri5/tsit5/dopri8 of order 3/4/4/7)."""
    T1 = 1.0
    # never on the dyadic grid, and spread over the step so that no lucky theta (a point where
    # an interpolant superconverges, e.g. Radau's collocation polynomial) decides the slope
    t_out = torch.tensor([0.0, 0.1111, 0.3, 0.4567, 0.55, 0.7777, 0.8, 0.9123, T1], dtype=torch.float64)
    ref = torch.stack([exact(float(x)) for x in t_out])[1:-1]
    errs = []
    for n in (8, 16, 32):
        h = T1 / n
        root = {k: v for k, v in (("root_rtol", 1e-14), ("root_atol", 1e-16)) if k in solvers.METHODS[name].option_names}
        ys = solvers.odeint(field, Y0, t_out, method=name, rtol=1e10, atol=1e10, options=dict(first_step=h, min_step=h, max_step=h, **root))
        errs.append(float((ys[1:-1] - ref).abs().max()))
    slope = math.log(errs[0] / errs[-1]) / math.log(4)
    expected = min(solvers.METHODS[name].order, 4)
    assert slope > expected - 0.3, f"{name}: dense output error {errs} decreases with order {slope:.2f}"
