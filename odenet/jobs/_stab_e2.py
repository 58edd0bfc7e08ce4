"""CLAIMS.md E2: the step Jacobians of a solver are autograd's VJP chain, and the linearised error
recursion of E1 holds on a nonlinear field up to O(h^2)."""

from __future__ import annotations

import math

import numpy as np
import scipy.integrate
import torch
from torch.utils.checkpoint import CheckpointError

import solvers

from .._block import ODEBlock
from ..analysis import jacobian, log_growth_slope
from ..fields import MLPField
from ._claims import Claim
from ._stab_common import Context, one_step_methods

__all__ = ["MEASURES", "e2"]

_TIGHT = dict(root_rtol=1e-14, root_atol=0.0)


def _field(ctx: Context, dim: int = 4) -> MLPField:
    ctx.manual_seed(35)
    return MLPField(dim, hidden=8).double()


def _step_product(field, method: str, y0: torch.Tensor, c: torch.Tensor, n_steps: int, h: float, options):
    """``(J_{N-1} ... J_0)^T c`` from the one-step Jacobians (``torch.func.jacrev`` of one step at
    the computed trajectory; reverse-mode rows by ``analysis.jacobian`` where jacrev cannot vmap)."""
    y, jacs = y0.detach(), []
    for k in range(n_steps):
        t = torch.tensor([k * h, (k + 1) * h], dtype=torch.float64)

        def step(v, t=t):
            return solvers.solve(field, v, t, method=method, options=options).ys[-1]

        try:
            jacs.append(torch.func.jacrev(step)(y).detach())
        except RuntimeError:  # custom autograd Functions without vmap rules (the implicit stage solves)
            jacs.append(jacobian(step, y).detach())
        with torch.no_grad():
            y = step(y)
    lam = c.clone()
    for j in reversed(jacs):
        lam = j.T @ lam
    return lam


def _autograd(field, method: str, y0, c, n_steps: int, h: float, gradient: str, options):
    x = y0.detach().clone().requires_grad_(True)
    block = ODEBlock(field, method=method, steps=n_steps, t1=n_steps * h, gradient=gradient, options=options)
    (g,) = torch.autograd.grad(c @ block(x), x)
    return g


def _chain(ctx: Context, field, y0, c):
    n_steps, h = (10, 0.1) if ctx.full else (4, 0.25)
    exp, meas, ok, errors = {}, {}, True, {}
    for name, cls in one_step_methods(fixed_only=True).items():
        ctx.tick(f"E2 {name}")
        options = _TIGHT if cls.implicit else None
        ref = _step_product(field, name, y0, c, n_steps, h, options)
        row = {}
        for mode in ("direct", "checkpoint"):
            try:
                g = _autograd(field, name, y0, c, n_steps, h, mode, options)
            except (solvers.SolverError, CheckpointError) as exc:  # a failing mode is a failing case, error kept
                errors[f"{name} {mode}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                row[mode] = "raises"
                ok = False
                # the same gradient with a root finder that does not reuse a cached Jacobian (reported)
                alt = dict(options or {}, root_finder="anderson", max_iters=200)
                g = _autograd(field, name, y0, c, n_steps, h, mode, alt)
                row[f"{mode} (anderson, report)"] = float((g - ref).norm() / ref.norm())
                continue
            row[mode] = float((g - ref).norm() / ref.norm())
            ok &= row[mode] <= 1e-12
        exp[name], meas[name] = {"direct": "<= 1e-12", "checkpoint": "<= 1e-12"}, row
    # the continuous adjoint: dopri5 at rtol 1e-10 against the direct (discrete) gradient
    rtol = 1e-10
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grads = {}
    for mode in ("direct", "adjoint"):
        ctx.tick(f"E2 dopri5 {mode}")
        x = y0.detach().clone().requires_grad_(True)
        y = solvers.solve(field, x, t, method="dopri5", rtol=rtol, atol=rtol, gradient=mode).ys[-1]
        (grads[mode],) = torch.autograd.grad(c @ y, x)
    d_adj = float((grads["adjoint"] - grads["direct"]).norm() / grads["direct"].norm())
    exp["dopri5 adjoint vs direct"], meas["dopri5 adjoint vs direct"] = f"<= {10 * rtol:g}", d_adj
    ok &= d_adj <= 10 * rtol
    return exp, meas, ok, errors


def _linearisation(ctx: Context, field, y0):
    """Gap between the linearised Euler error recursion and the true Euler error, per step count."""
    t_end = 1.0
    f_np = lambda t, y: field(None, torch.as_tensor(y)).detach().numpy()  # noqa: E731
    gaps, errs, hs = {}, {}, []
    for n in (20, 40, 80, 160, 320):
        ctx.tick(f"E2 linearisation n={n}")
        h = t_end / n
        grid = np.linspace(0.0, t_end, n + 1)
        ex = scipy.integrate.solve_ivp(f_np, (0.0, t_end), y0.numpy(), method="DOP853", t_eval=grid,
                                       rtol=1e-13, atol=1e-13).y.T
        exact = torch.as_tensor(ex)
        with torch.no_grad():
            y = y0.clone()
            e_lin = torch.zeros_like(y0)
            gap = err = 0.0
            for k in range(n):
                jk = jacobian(lambda v: field(None, v), exact[k])
                tau = exact[k + 1] - (exact[k] + h * field(None, exact[k]))
                e_lin = e_lin + h * (jk @ e_lin) - tau
                y = y + h * field(None, y)
                e_true = y - exact[k + 1]
                gap = max(gap, float((e_lin - e_true).norm()))
                err = max(err, float(e_true.norm()))
        gaps[n], errs[n] = gap, err
        hs.append(h)
    slope = log_growth_slope([math.log(h) for h in hs], [math.log(gaps[n]) for n in gaps])
    err_slope = log_growth_slope([math.log(h) for h in hs], [math.log(errs[n]) for n in errs])
    return gaps, errs, slope, err_slope


def e2(ctx: Context) -> Claim:
    field = _field(ctx)
    gen = ctx.generator(36)
    y0 = torch.randn(4, dtype=torch.float64, generator=gen)
    c = torch.randn(4, dtype=torch.float64, generator=gen)
    exp, meas, ok, errors = _chain(ctx, field, y0, c)
    gaps, errs, slope, err_slope = _linearisation(ctx, field, 2 * y0)
    exp["linearisation gap slope"], meas["linearisation gap slope"] = "2 +- 0.2", slope
    ok &= abs(slope - 2) <= 0.2
    meas["Euler error slope (report)"] = err_slope
    return Claim("E2", "the product of one-step Jacobians times c is grad(c^T y_N) (direct, checkpoint; adjoint to "
                       "10 rtol); the linearised error recursion e_{n+1} = (I+hJ_n)e_n - tau_{n+1} misses the "
                       "true Euler error by O(h^2)", exp, meas,
                 "1e-12 relative (direct, checkpoint); 10 rtol (adjoint); slope 2 +- 0.2", bool(ok),
                 notes="MLPField(4, hidden 8, tanh), float64, N=4 steps of h=0.25 (--full: 10 of 0.1) for every "
                       "fixed-step one-step method (implicit ones at root_rtol 1e-14, default root finder, which is "
                       "newton at this size); one-step Jacobians by "
                       "torch.func.jacrev (reverse-mode rows where jacrev cannot vmap the implicit solve), gradient "
                       "by ODEBlock in each mode. A mode that raises is a failing case, its error in details (and "
                       "the same gradient with root_finder='anderson' is reported beside it). "
                       "Adjoint: solvers.solve dopri5 rtol = atol = 1e-10 on [0, 1]. Linearisation: Euler on the "
                       "same field from 2 y0, T=1, h = T/{20..320}, J_n and tau at the exact trajectory (scipy "
                       "DOP853, rtol 1e-13); gap = max_n |e_lin - e_true|, slope fitted in log-log.",
                 details={"errors": errors, "gaps": {str(k): v for k, v in gaps.items()},
                          "euler errors": {str(k): v for k, v in errs.items()}})


MEASURES = {"E2": e2}
