"""Dense output on per-sample time grids: ``solve(f, y0, t[B, T], dense=True).evaluate(tq[B, Q])``.

References: the exact solution of a linear ODE (``matrix_exp``), scipy ``solve_ivp`` with
``dense_output=True`` at tight tolerance, and B separate shared-grid solves' ``evaluate``
(the batched loop takes the very same steps per sample, so the interpolants agree to
rounding: observed <= 2e-12, asserted 1e-10). Gradients against the separate solves and
``gradcheck`` in float64; named errors for bad queries.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import solvers
from _grids_common import lengths_of, random_grid

F64 = torch.float64
A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=F64)


def forced(t, y):
    """``y' = A y + sin(t)``: non-autonomous, so a wrong per-sample time shows."""
    s = torch.sin(t)[..., None] if t.ndim else torch.sin(t)
    return y @ A.T + s * torch.ones_like(y)


def grid(B=4, T=6, seed=0, pad_row=1, pad_from=3):
    return random_grid(B, T, seed, pad_row, pad_from, span=4)



def queries(t, Q=9, seed=1):
    """Q random times inside each row's own span, plus both ends of the span."""
    g = torch.Generator().manual_seed(seed)
    L = torch.tensor(lengths_of(t))
    lo, hi = t[:, :1], t.gather(1, (L - 1)[:, None])
    u = torch.rand(t.shape[0], Q, generator=g, dtype=F64)
    return torch.cat([lo, lo + u * (hi - lo), hi], dim=1)


CASES = [
    ("dopri5", dict(rtol=1e-9, atol=1e-9)),
    ("tsit5", dict(rtol=1e-9, atol=1e-9)),
    ("bosh3", dict(rtol=1e-5, atol=1e-7)),
    ("adaptive_heun", dict(rtol=1e-3, atol=1e-5)),  # no b_dense: cubic Hermite
    ("dopri8", dict(rtol=1e-9, atol=1e-9)),  # dense-only extra stages
    ("rk4", dict()),  # the rows' own intervals
    ("rk4", dict(options=dict(step_size=0.1))),
    ("midpoint", dict(options=dict(step_size=0.07))),
]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_equals_separate_solves(name, kw, reverse):
    t, y0 = grid()
    t = -t if reverse else t
    sol = solvers.solve(forced, y0, t, method=name, dense=True, **kw)
    tq = queries(t)
    yq = sol.evaluate(tq)
    assert yq.shape == (tq.shape[1], 4, 2)
    for b, L in enumerate(lengths_of(t)):
        one = solvers.solve(forced, y0[b : b + 1], t[b, :L], method=name, dense=True, **kw)
        torch.testing.assert_close(yq[:, b], one.evaluate(tq[b])[:, 0], rtol=0, atol=1e-10)
    # recording changes nothing of the solve itself
    plain = solvers.solve(forced, y0, t, method=name, **kw)
    assert torch.equal(plain.ys, sol.ys)


def test_exact_solution_at_tight_tolerance():
    """Linear ``y' = A y``: exp((tq - t0_b) A) y0_b on each row's own queries."""
    t, y0 = grid(B=5, pad_row=2)
    sol = solvers.solve(lambda s, y: y @ A.T, y0, t, method="dopri5", rtol=1e-11, atol=1e-12, dense=True)
    tq = queries(t, Q=25)
    dt = (tq - t[:, :1]).T.contiguous()  # (Q, B)
    exact = torch.einsum("qbij,bj->qbi", torch.linalg.matrix_exp(dt[..., None, None] * A), y0)
    err = float((sol.evaluate(tq) - exact).abs().max())
    assert err < 5e-11, err  # observed 5.5e-12


def test_against_scipy_dense_output():
    """Nonlinear, non-autonomous field: scipy DOP853 at rtol 1e-12 per sample."""
    from scipy.integrate import solve_ivp

    def f(s, y):  # s: [B] (per-sample grid) or 0-dim
        return torch.stack([y[:, 1], -torch.sin(y[:, 0]) + 0.3 * torch.cos(s)], dim=-1)

    t, y0 = grid(B=3, seed=3)
    sol = solvers.solve(f, y0, t, method="tsit5", rtol=1e-10, atol=1e-12, dense=True)
    tq = queries(t, Q=20)
    yq = sol.evaluate(tq)
    for b, L in enumerate(lengths_of(t)):
        ref = solve_ivp(lambda s, y: [y[1], -np.sin(y[0]) + 0.3 * np.cos(s)], (float(t[b, 0]), float(t[b, L - 1])), y0[b].numpy(),
                        method="DOP853", rtol=1e-12, atol=1e-13, dense_output=True)
        want = torch.from_numpy(ref.sol(tq[b].numpy()).T)
        err = float((yq[:, b] - want).abs().max())
        assert err < 1e-9, (b, err)  # observed <= 1.5e-10 (tsit5's interpolant at rtol 1e-10)


def test_zero_span_row_and_output_times():
    """A row with one distinct time is a one-point span (its y0); queries at the row's own
    output times give the solve's outputs."""
    t, y0 = grid(B=3, pad_row=None)
    t[1, 1:] = t[1, 0]
    sol = solvers.solve(forced, y0, t, method="dopri5", rtol=1e-10, atol=1e-10, dense=True)
    y = sol.evaluate(t)
    torch.testing.assert_close(y, sol.ys, rtol=0, atol=1e-12)
    torch.testing.assert_close(y[:, 1], y0[1].expand(t.shape[1], 2), rtol=0, atol=0)
    assert sol.evaluate(t[:, :0]).shape == (0, 3, 2)
    span = sol.dense.span
    torch.testing.assert_close(span[:, 0], t[:, 0])
    torch.testing.assert_close(span[:, 1], t[:, -1])


def test_gradients_equal_separate_solves():
    """d/d(y0, k, tq) of a loss on the dense output equals the per-sample sums."""
    t, y0 = grid(B=3)
    tq = queries(t, Q=4)

    def run(y0, k, tq, t):
        return solvers.solve(lambda s, y: -k * y + torch.sin(s)[..., None] if s.ndim else -k * y + torch.sin(s), y0, t, method="dopri5",
                             rtol=1e-10, atol=1e-10, dense=True).evaluate(tq)

    k = torch.tensor(0.7, dtype=F64, requires_grad=True)
    y0b = y0.clone().requires_grad_(True)
    tqb = tq.clone().requires_grad_(True)
    loss = (run(y0b, k, tqb, t) ** 2).sum()
    gy, gk, gt = torch.autograd.grad(loss, (y0b, k, tqb))
    gk_ref = torch.zeros((), dtype=F64)
    for b, L in enumerate(lengths_of(t)):
        yb = y0[b : b + 1].clone().requires_grad_(True)
        tb = tq[b].clone().requires_grad_(True)
        lb = (run(yb, k, tb, t[b, :L]) ** 2).sum()
        a, c, d = torch.autograd.grad(lb, (yb, k, tb))
        torch.testing.assert_close(gy[b], a[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gt[b], d, rtol=1e-10, atol=1e-12)
        gk_ref = gk_ref + c
    torch.testing.assert_close(gk, gk_ref, rtol=1e-10, atol=0)


def test_gradcheck_fixed_steps():
    """gradcheck on rk4 with step_size (the discretisation does not move with the inputs)."""
    t = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.9, 0.9]], dtype=F64)
    tq0 = torch.tensor([[0.13, 0.77], [0.31, 0.6]], dtype=F64)

    def fn(y0, k, tq):
        f = lambda s, y: -k * y + torch.sin(s)[:, None]  # noqa: E731
        return solvers.solve(f, y0, t, method="rk4", options=dict(step_size=0.15), dense=True).evaluate(tq)

    y0 = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=F64, requires_grad=True)
    k = torch.tensor(0.7, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (y0, k, tq0.clone().requires_grad_(True)))


def test_hermite_last_step_costs_one_evaluation():
    """A non-FSAL fixed-step method needs f(t1, y1) of each step: the next step evaluates it,
    and the last one is evaluated once, for the batch, at the first query."""
    t, y0 = grid(B=3)
    n0 = solvers.solve(forced, y0, t, method="rk4").stats.n_f_evals
    sol = solvers.solve(forced, y0, t, method="rk4", dense=True)
    assert sol.stats.n_f_evals == n0
    sol.evaluate(queries(t))
    sol.evaluate(queries(t, seed=2))
    assert sol.stats.n_f_evals == n0 + 1


def test_bad_queries_are_refused_by_name():
    t, y0 = grid(B=3, pad_row=None)
    sol = solvers.solve(forced, y0, t, method="dopri5", dense=True)
    ok = queries(t, Q=2)
    with pytest.raises(ValueError, match=r"shape \[B, Q\] = \[3, Q\].*t\[:, None\]"):
        sol.evaluate(ok[0])
    with pytest.raises(ValueError, match=r"shape \[B, Q\]"):
        sol.evaluate(ok[:2])
    with pytest.raises(TypeError, match="tensor of query times"):
        sol.evaluate(0.5)
    with pytest.raises(TypeError, match="floating-point"):
        sol.evaluate(ok.to(torch.long))
    bad = ok.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in row 2"):
        sol.evaluate(bad)
    # inside sample 0's span but before sample 1 starts
    bad = ok.clone()
    bad[1, 0] = t[1, 0] - 1e-3
    with pytest.raises(ValueError, match=r"`t`\[1, 0\]=.* outside the solved span \[.*\] of sample 1"):
        sol.evaluate(bad)
    bad = ok.clone()
    bad[0, 1] = t[0, -1] + 1e-9
    with pytest.raises(ValueError, match="of sample 0"):
        sol.evaluate(bad)
    # what stays refused on a per-sample grid
    with pytest.raises(ValueError, match=r"`events` is not supported on a per-sample `t`"):
        solvers.solve(forced, y0, t, events=lambda s, y: y[:, 0])
    with pytest.raises(ValueError, match="gradient='direct'"):
        solvers.solve(forced, y0, t, dense=True, gradient="adjoint")
    with pytest.raises(ValueError, match="does not require grad"):
        solvers.solve(forced, y0, t.clone().requires_grad_(True), dense=True)


def test_multi_dimensional_float32_state():
    """A [B, 2, 3] float32 state: y' = -(1 + cos t) y, y = y0 exp(-(t - t0) - (sin t - sin t0))."""
    t, _ = grid(B=3)
    y0 = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(4))
    sol = solvers.solve(lambda s, y: -(1 + torch.cos(s)).reshape(-1, 1, 1) * y, y0, t, method="tsit5", rtol=1e-6, atol=1e-7, dense=True)
    tq = queries(t, Q=7)
    yq = sol.evaluate(tq)
    assert yq.shape == (9, 3, 2, 3) and yq.dtype == torch.float32
    g = (tq - t[:, :1]) + (torch.sin(tq) - torch.sin(t[:, :1]))  # (B, Q)
    exact = y0[None].double() * torch.exp(-g).T[:, :, None, None]
    err = float((yq.double() - exact).abs().max())
    assert err < 3e-6, err  # observed 7.8e-7 (rtol 1e-6, float32)
