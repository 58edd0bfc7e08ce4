"""E2: one-step Jacobians chain to autograd's gradient; the linearised Euler error is O(h^2) off."""

import pytest
import torch

from odenet.jobs import _stab_e2 as e2m
from odenet.jobs._stab_common import Context


@pytest.fixture
def setup():
    ctx = Context()
    field = e2m._field(ctx)
    gen = ctx.generator(36)
    y0 = torch.randn(4, dtype=torch.float64, generator=gen)
    c = torch.randn(4, dtype=torch.float64, generator=gen)
    return ctx, field, y0, c


@pytest.mark.parametrize("method", ["euler", "rk4", "implicit_euler", "implicit_midpoint", "sdirk2"])
@pytest.mark.parametrize("mode", ["direct", "checkpoint"])
def test_step_jacobian_product_is_the_gradient(setup, method, mode):
    ctx, field, y0, c = setup
    opts = e2m._TIGHT if "implicit" in method or method == "sdirk2" else None
    ref = e2m._step_product(field, method, y0, c, 4, 0.2, opts)
    g = e2m._autograd(field, method, y0, c, 4, 0.2, mode, opts)
    assert float((g - ref).norm() / ref.norm()) <= 1e-12  # measured <= 2e-15


def test_step_product_matches_finite_differences(setup):
    # the reference itself, against central differences of the 4-step euler map (an independent check)
    import solvers

    ctx, field, y0, c = setup
    ref = e2m._step_product(field, "euler", y0, c, 4, 0.2, None)

    def phi(y):
        return c @ solvers.solve(field, y, torch.linspace(0, 0.8, 5, dtype=torch.float64), method="euler").ys[-1]

    eps = 1e-6
    fd = torch.stack([(phi(y0 + eps * e) - phi(y0 - eps * e)) / (2 * eps)
                      for e in torch.eye(4, dtype=torch.float64)])
    assert float((fd - ref).detach().norm() / ref.detach().norm()) < 1e-8


def test_collocation_checkpoint_with_anderson(setup):
    ctx, field, y0, c = setup
    opts = dict(e2m._TIGHT, root_finder="anderson", max_iters=200)
    ref = e2m._step_product(field, "gl4", y0, c, 3, 0.2, e2m._TIGHT)
    g = e2m._autograd(field, "gl4", y0, c, 3, 0.2, "checkpoint", opts)
    assert float((g - ref).norm() / ref.norm()) <= 1e-12


def test_collocation_checkpoint_with_newton(setup):
    ctx, field, y0, c = setup
    ref = e2m._step_product(field, "gl4", y0, c, 3, 0.2, e2m._TIGHT)
    g = e2m._autograd(field, "gl4", y0, c, 3, 0.2, "checkpoint", dict(e2m._TIGHT, root_finder="newton"))
    assert float((g - ref).norm() / ref.norm()) <= 1e-12


def test_linearisation_gap_is_second_order(setup):
    ctx, field, y0, c = setup
    gaps, errs, slope, err_slope = e2m._linearisation(ctx, field, 2 * y0)
    assert abs(slope - 2) <= 0.2  # measured 1.986
    assert abs(err_slope - 1) <= 0.05  # Euler itself is first order: measured 1.001
    assert all(gaps[n] < 1e-3 * errs[n] for n in gaps)  # the gap is far below the error it corrects


@pytest.mark.slow
def test_e2_claim():
    c = e2m.e2(Context())
    assert c.holds is False  # only because of the collocation checkpoint bug
    assert set(c.details["errors"]) == {f"{m} checkpoint" for m in ("gl4", "gl6", "radauIIA3", "radauIIA5")}
    for name, row in c.measured.items():
        if isinstance(row, dict):
            assert all(v <= 1e-12 for v in row.values() if not isinstance(v, str)), name
    assert c.measured["dopri5 adjoint vs direct"] <= 1e-9
