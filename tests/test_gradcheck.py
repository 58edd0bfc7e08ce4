"""``torch.autograd.gradcheck`` (float64) of a solve with respect to ``(y0, t, params)``.

Every method in the registry, with direct and checkpointed gradients. Adaptive methods
are checked on a frozen step sequence (huge tolerances, so every step is ``max_step``):
the gradient of an adaptive solve treats the controller's decisions as constants, and
with frozen decisions the solve is a smooth function that finite differences can check.
Implicit methods are included through the registry (checked in gradcheck's fast mode);
every case must pass, none is skipped. External wrappers (``scipy_solver``) carry no gradient
and are left out; methods with their own loop (Adams) have no single step to checkpoint and
run with direct gradients only.
"""

import pytest
import torch

import solvers

# external wrappers (scipy_solver) carry no gradient; own-loop methods have no step to checkpoint
METHODS = sorted(n for n, c in solvers.METHODS.items() if not getattr(c, "external", False))
# Checkpointing solves an implicit method three times per call: the fixed-step implicit methods
# whose checkpointed backward once crashed stay in the default run, the other implicit methods
# (collocation, ESDIRK, Radau) run under -m slow.
_FAST_IMPLICIT = {"implicit_euler", "implicit_midpoint", "trapezoid"}
CASES = [
    pytest.param(name, gradient, marks=[pytest.mark.slow] if (solvers.METHODS[name].implicit and gradient == "checkpoint"
                                                             and name not in _FAST_IMPLICIT) else [])
    for name in METHODS
    for gradient in ("direct", "checkpoint")
    if not (gradient == "checkpoint" and issubclass(solvers.METHODS[name], solvers.AbstractOwnLoopSolver))
]


def _field(W, b):
    def f(t, y):
        return torch.tanh(y @ W.T + b) * (1.0 + 0.5 * torch.sin(t)) - 0.3 * y

    return f


def _grid(f, y0, t):
    """Six grid points from t[0] to t[-1], a differentiable function of t."""
    inner = t[0] + (t[-1] - t[0]) * torch.linspace(0.0, 1.0, 6, dtype=torch.float64)[:-1]
    return torch.cat([inner, t[-1:]])


def _options(cls):
    opts = {k: 1e-10 for k in ("root_rtol", "root_atol") if k in cls.option_names}  # implicit stages
    if cls.adaptive:
        return dict(opts, first_step=0.2, max_step=0.2), dict(rtol=1e3, atol=1e3)
    return dict(opts, grid_constructor=_grid), {}


def _inputs():
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(1, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.42, 0.95], dtype=torch.float64)
    W = torch.randn(2, 2, generator=g, dtype=torch.float64) * 0.8
    b = torch.randn(2, generator=g, dtype=torch.float64) * 0.3
    return [v.requires_grad_() for v in (y0, t, W, b)]


@pytest.mark.parametrize("name, gradient", CASES)
def test_gradcheck(name, gradient):
    cls = solvers.METHODS[name]
    options, tols = _options(cls)
    extra = {"checkpoints": 2} if gradient == "checkpoint" else None

    def fn(y0, t, W, b):
        sol = solvers.solve(_field(W, b), y0, t, method=name, options=options, gradient=gradient, gradient_options=extra, **tols)
        return sol.ys

    inputs = _inputs()
    if not cls.implicit:
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)
        return
    # Implicit stages are solved to 1e-10 (root_rtol/root_atol above), so the solve is smooth
    # to ~1e-10 and central differences with eps=1e-6 carry ~1e-4 relative noise from it:
    # atol 1e-6 / rtol 1e-5 are that noise with a 10x margin. Fast mode (a random projection
    # of the Jacobian) keeps these solves affordable. Any exception fails the test.
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint"])
def test_gradcheck_tuple_state_decreasing_time(gradient):
    """Tuple states and decreasing time go through the same gradient paths."""
    g = torch.Generator().manual_seed(1)
    W = (torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.5).requires_grad_()

    def fn(a, b, t, W):
        def f(tt, y):
            z = torch.cat([y[0], y[1]], dim=-1) @ W.T
            return torch.tanh(z[..., :1]) * torch.cos(tt), torch.sin(z[..., 1:])

        sol = solvers.solve(f, (a, b), t, method="rk4", options=dict(grid_constructor=_grid), gradient=gradient)
        return sol.ys

    a = torch.randn(2, 1, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 2, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.tensor([1.0, 0.63, 0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (a, b, t, W), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradcheck_step_size_grid_time_gradient():
    def fn(y0, t):
        return solvers.solve(lambda tt, y: -y * torch.cos(tt), y0, t, method="euler", options=dict(step_size=0.2)).ys

    y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.42, 0.95], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (y0, t), eps=1e-6, atol=1e-7, rtol=1e-6)
