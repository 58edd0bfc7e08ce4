"""CLAIMS.md sections F1, F2 (Lyapunov exponents) and G (gated residuals)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import solvers

from .._block import ODEBlock
from ..analysis import (Lorenz, jacobian, log_growth_slope, lyapunov_exponents,
                        map_lyapunov_exponent, singular_values, tanh_rnn_mean_field_lambda1)
from ..fields import LayerwiseField, MLPField
from ._claims import Claim
from ._stab_common import Context, exact_normalise

__all__ = ["MEASURES"]


# ----------------------------------------------------------------------------- F1

#: backward-step budget of F1's plain continuous adjoint (it otherwise crawls for many minutes
#: once the reverse-time rebuild of the chaotic Lorenz flow leaves the attractor). 2500 gives
#: the same outcomes as 5000 (T=1, 2: AdjointRebuildError; T=4, 8: MaxStepsError) in 26 s
#: instead of 67 s for T=4 and 8; 1000 would turn T=2's rebuild error into a step-budget one
#: (measured 2026-12-01)
_ADJOINT_STEPS = 2500


def f1(ctx: Context) -> Claim:
    field = Lorenz()
    t_end = 1e4 if ctx.full else 1e3
    y0 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    done = [0.0]

    def progress(dt):
        done[0] += dt
        if int(done[0]) % 50 == 0:
            ctx.tick(f"F1 Lorenz t={done[0]:.0f}/{t_end:.0f}")

    res = lyapunov_exponents(field, y0, t_end=t_end, dt=0.01, method="rk4", window=1.0, transient=20.0,
                             progress=progress)
    lam = res["exponents"]
    tol1 = 0.005 if t_end >= 1e4 else 0.015
    exp = {"lambda_1": 0.9056, "lambda_2": 0.0, "lambda_3": -14.572, "sum": field.trace}
    meas = {"lambda_1": lam[0], "lambda_2": lam[1], "lambda_3": lam[2], "sum": res["sum"]}
    ok = abs(lam[0] - 0.906) <= tol1 and abs(lam[1]) < 0.01 and abs(res["sum"] - field.trace) <= 1e-3
    w = np.asarray(res["window_lambda1"])
    n_win = 1000
    spread = float(np.std([w[i:i + n_win].mean() for i in range(0, len(w) - n_win + 1, n_win)])) \
        if len(w) >= 2 * n_win else None
    # gradient growth: slope of mean log sigma_max(dx(T)/dx(0)) against T, dopri5, direct mode
    x_att = res["state"]
    times = [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    n_pts = 20 if ctx.full else 2
    grid = torch.tensor([0.0] + [3.0 * (i + 1) for i in range(n_pts)], dtype=torch.float64)
    starts = solvers.solve(field, x_att, grid, method="rk4", options=dict(step_size=0.01)).ys[1:]
    # dx(T)/dx(0) by autograd through dopri5, chained over the intervals between the output
    # times: one solve per interval from the previous interval's end state, its 3x3 Jacobian
    # by one batched backward pass through that interval's graph only, and the running
    # product. The chain rule makes the product the Jacobian of the composed solves; against
    # one solve to every T with 3 backward passes per output through the whole graph (which
    # cost ~90 s per point) it is 8x cheaper and agrees to 3e-9 relative (log sigma_max to
    # 1e-9) at T <= 2 (measured 2026-12-01; the restarts change dopri5's steps, at rtol 1e-9)
    eye = torch.eye(3, dtype=torch.float64)
    per_point = []
    for i, x0 in enumerate(starts):
        ctx.tick(f"F1 gradients point {i + 1}/{len(starts)}")
        state, prod, t_prev, row = x0.detach(), eye, 0.0, []
        for t_k in times:
            x = state.clone().requires_grad_(True)
            y = solvers.solve(field, x, torch.tensor([t_prev, t_k], dtype=torch.float64), method="dopri5",
                              rtol=1e-9, atol=1e-9).ys[-1]
            (jac,) = torch.autograd.grad(y, x, grad_outputs=eye, is_grads_batched=True)
            prod = jac @ prod
            row.append(math.log(float(torch.linalg.svdvals(prod).max())))
            state, t_prev = y.detach(), t_k
        per_point.append(row)
    logs = [float(v) for v in np.mean(np.asarray(per_point), axis=0)]
    slope = log_growth_slope(times, logs)
    # direct vs checkpoint vs the adjoints at one point, T = 8; the plain continuous adjoint
    # rebuilds the state backwards in time, which a chaotic flow amplifies: it is measured at
    # growing horizons, with a step budget, and its departure (or failure) is reported
    x0 = starts[0].clone().requires_grad_(True)

    def grad_at(mode, T, **kw):
        y = solvers.solve(field, x0, torch.tensor([0.0, T], dtype=torch.float64), method="dopri5", rtol=1e-9,
                          atol=1e-9, gradient=mode, **kw).ys[-1]
        return torch.autograd.grad(y.sum(), x0)[0]

    grads = {}
    for mode in ("direct", "checkpoint", "checkpointed_adjoint"):
        ctx.tick(f"F1 gradient mode {mode}")
        grads[mode] = grad_at(mode, 8.0)
    d_ck = float((grads["checkpoint"] - grads["direct"]).norm() / grads["direct"].norm())
    d_aca = float((grads["checkpointed_adjoint"] - grads["direct"]).norm() / grads["direct"].norm())
    adj = {}
    for T in (1.0, 2.0, 4.0, 8.0):
        ctx.tick(f"F1 adjoint T={T:g}")
        ref = grads["direct"] if T == 8.0 else grad_at("direct", T)
        try:
            g = grad_at("adjoint", T, gradient_options=dict(options=dict(max_num_steps=_ADJOINT_STEPS)))
            adj[f"T={T:g}"] = float((g - ref).norm() / ref.norm())
        except solvers.SolverError as exc:
            adj[f"T={T:g}"] = f"failed: {type(exc).__name__}"
    departs = [k for k, v in adj.items() if not isinstance(v, float) or v > 0.01]
    exp["gradient slope"] = 0.906
    meas["gradient slope"] = slope
    ok &= abs(slope - 0.906) <= 0.1
    exp["checkpoint vs direct"] = "<= 1e-6"
    meas["checkpoint vs direct"] = d_ck
    ok &= d_ck <= 1e-6
    exp["checkpointed_adjoint vs direct (report)"] = "report"
    meas["checkpointed_adjoint vs direct (report)"] = d_aca
    meas["adjoint vs direct (report)"] = adj
    return Claim("F1", "Benettin/QR on Lorenz (10, 28, 8/3): lambda = (0.9056, 0, -14.572), sum = tr J = -13.6667; "
                       "log sigma_max(dx(T)/dx(0)) grows at lambda_1", exp, meas,
                 f"lambda_1 +-{tol1} (T={t_end:g}), |lambda_2| < 0.01, sum +-1e-3, slope +-0.1, checkpoint 1e-6",
                 bool(ok),
                 notes=f"rk4, h=0.01, QR every 1 time unit, T={t_end:g} after a transient of 20, through "
                       f"solvers.solve on the state (x, V) with Lorenz.jvp. Gradient slope: dopri5 (rtol=atol=1e-9, "
                       f"direct, Jacobians chained over the intervals between the T), mean over {n_pts} attractor points, T in {times}. The plain continuous adjoint "
                       f"(reverse-time rebuild of a chaotic flow, {_ADJOINT_STEPS} backward steps at most) departs "
                       f"from direct by > 1 % (or fails) at {', '.join(departs) or 'no horizon measured'}; "
                       f"the checkpointed adjoint stays at {d_aca:.1e} at T=8.",
                 details={"window_std_T1000": spread, "mean_log_sigma_max": dict(zip(map(str, times), logs))})


# ----------------------------------------------------------------------------- F2

def _orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    return q * torch.sign(torch.diagonal(r))


def f2(ctx: Context) -> Claim:
    n = 256
    gains = (0.5, 0.9, 0.95, 1.1, 1.2, 1.5, 2.0)
    steps, transient = (4000, 1000) if ctx.full else (1500, 500)
    w_orth = _orthogonal(n, ctx.generator(61))
    h0 = torch.randn(n, dtype=torch.float64, generator=ctx.generator(62))
    gvec = torch.tensor(gains, dtype=torch.float64)[:, None]  # one row per gain, run as one batch
    ctx.tick("F2 orthogonal")
    rows = map_lyapunov_exponent(lambda h: torch.tanh(gvec * (h @ w_orth.T)), h0.expand(len(gains), n),
                                 n_steps=steps, transient=transient, generator=ctx.generator(63))
    lam_orth = {g: float(v) for g, v in zip(gains, rows)}
    mf = {g: tanh_rnn_mean_field_lambda1(g) for g in gains}
    ok = all(abs(lam_orth[g] - math.log(g)) < 0.005 for g in gains if g <= 0.9)
    ok &= all(abs(lam_orth[g] - mf[g]) < 0.01 for g in gains if g >= 1.5)
    ok &= lam_orth[0.95] < 0 and lam_orth[1.2] > 0
    # Gaussian W ~ N(0, 1/n): g <= 0.9 against log rho(gW); g = 2 median of 3 draws against 0.155
    gauss = {}
    rho_dev = []
    g2 = []
    g3 = torch.tensor([0.5, 0.9, 2.0], dtype=torch.float64)[:, None]
    for d in range(3):
        w = torch.randn(n, n, dtype=torch.float64, generator=ctx.generator(64 + d)) / math.sqrt(n)
        rho = float(torch.linalg.eigvals(w).abs().max())
        ctx.tick(f"F2 gaussian draw {d}")
        rows = map_lyapunov_exponent(lambda h, w=w: torch.tanh(g3 * (h @ w.T)), h0.expand(3, n), n_steps=steps,
                                     transient=transient, generator=ctx.generator(63))
        for g, lam in zip((0.5, 0.9), rows[:2]):
            gauss[f"draw {d} g={g}"] = float(lam)
            rho_dev.append(abs(float(lam) - math.log(g * rho)))
        g2.append(float(rows[2]))
    ok &= max(rho_dev) < 0.01 and abs(float(np.median(g2)) - 0.155) < 0.03
    # autograd slope of log |dh_T/dh_0| on [50, 200] at g = 2 (orthogonal) against the QR estimate
    ctx.tick("F2 autograd slope")
    h = h0.clone()
    with torch.no_grad():
        for _ in range(transient):
            h = torch.tanh(2.0 * (w_orth @ h))
    hs = h.clone().requires_grad_(True)
    x = hs
    Ts, logs = (50, 100, 150, 200), []
    v = torch.randn(n, dtype=torch.float64, generator=ctx.generator(65))
    for t in range(1, 201):
        x = torch.tanh(2.0 * (w_orth @ x))
        if t in Ts:
            (gr,) = torch.autograd.grad(x, hs, v, retain_graph=True)
            logs.append(math.log(float(gr.norm())))
    slope = log_growth_slope(Ts, logs)
    ok &= abs(slope - lam_orth[2.0]) < 0.02
    exp = {**{f"orthogonal g={g}": (math.log(g) if g < 1 else mf[g]) for g in gains},
           "gaussian max|lambda - log rho(gW)| (g<=0.9)": "< 0.01", "gaussian g=2 median": 0.155,
           "autograd slope g=2": lam_orth[2.0]}
    meas = {**{f"orthogonal g={g}": lam_orth[g] for g in gains},
            "gaussian max|lambda - log rho(gW)| (g<=0.9)": max(rho_dev),
            "gaussian g=2 median": float(np.median(g2)), "autograd slope g=2": slope}
    ctx.figures["edge_of_chaos"] = {"gains": list(gains), "orthogonal": [lam_orth[g] for g in gains],
                                    "mean_field": {str(g): mf[g] for g in gains}}
    return Claim("F2", "tanh RNN h <- tanh(gWh), n=256: lambda_1 = log g below g=1, mean-field above; sign change "
                       "in (0.95, 1.2]", exp, meas,
                 "0.005 (g<=0.9), 0.01 of mean field (g>=1.5), Gaussian 0.01 / 0.03, estimates agree within 0.02",
                 bool(ok),
                 notes=f"renormalised JVPs ({steps} steps after {transient}); mean field by Gauss-Hermite "
                       f"quadrature; expected for 0.95 < g < 1.5 is the mean-field value, judged only by sign.",
                 details={"gaussian": gauss, "gaussian_g2_draws": g2})


# ----------------------------------------------------------------------------- G

class _Highway(nn.Module):
    """The field tau (H(x) - x) of a highway layer with a constant gate tau = sigmoid(b)."""

    def __init__(self, h: nn.Module, tau: float):
        super().__init__()
        self.h, self.tau = h, tau

    def forward(self, x):
        return self.tau * (self.h(x) - x)


def g1(ctx: Context) -> Claim:
    ctx.manual_seed(71)
    dim, ell = 32, 0.5
    x0 = torch.randn(dim, dtype=torch.float64, generator=ctx.generator(71))
    exp, meas, ok = {}, {}, True
    for b in (3.0, 0.0, -3.0):
        tau = 1 / (1 + math.exp(-b))
        for L in (5, 10, 20, 50):
            ctx.tick(f"G1 b={b} L={L}")
            hs = []
            for _ in range(L):
                lin1 = exact_normalise(nn.Linear(dim, dim).double(), 1.0)
                lin2 = exact_normalise(nn.Linear(dim, dim).double(), ell)
                hs.append(nn.Sequential(lin1, nn.Tanh(), lin2))
            block = ODEBlock(LayerwiseField([_Highway(h, tau) for h in hs], t1=float(L)), method="euler", steps=L)

            def highway(x):
                for h in hs:
                    x = tau * h(x) + (1 - tau) * x
                return x

            with torch.no_grad():
                same = float((block(x0) - highway(x0)).abs().max())
            s = singular_values(block, x0)
            lo, hi = max((1 - tau) - tau * ell, 0.0) ** L, ((1 - tau) + tau * ell) ** L
            key = f"b={b:g} L={L}"
            exp[key] = [lo, hi]
            meas[key] = [float(s.min()), float(s.max())]
            ok &= float(s.min()) >= lo * (1 - 1e-6) and float(s.max()) <= hi * (1 + 1e-6) and same <= 1e-12
    return Claim("G1", "highway y = T H + (1-T) x is Euler on x' = H(x) - x with step T; constant gate tau: per-layer "
                       "sigma in [(1-tau) - tau l, (1-tau) + tau l]", exp, meas, "bounds, slack 1e-6", ok,
                 notes="untied highway MLPs (dim 32, H = W2 tanh(W1 x), ||W1||=1, ||W2||=0.5 by SVD) as a "
                       "LayerwiseField under ODEBlock(euler, h=1), checked equal to the highway formula to 1e-12; "
                       "SVD of the autograd Jacobian.")


class _GRUField(nn.Module):
    """``(1 - z) * (n - h)`` from a ``torch.nn.GRUCell``'s weights at a fixed input ``x``."""

    def __init__(self, cell: nn.GRUCell, x: torch.Tensor):
        super().__init__()
        self.cell, self.x = cell, x

    def forward(self, t, h):
        c = self.cell
        gi = self.x @ c.weight_ih.T + c.bias_ih
        gh = h @ c.weight_hh.T + c.bias_hh
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * (n - h)


def g2(ctx: Context) -> Claim:
    ctx.manual_seed(72)
    cell = nn.GRUCell(8, 16)
    x = torch.randn(32, 8, generator=ctx.generator(72))
    h = torch.randn(32, 16, generator=ctx.generator(73))
    block = ODEBlock(_GRUField(cell, x), method="euler", steps=1, t1=1.0)
    with torch.no_grad():
        dev = float((block(h) - cell(x, h)).abs().max())
    return Claim("G2", "GRUCell h' = h + (1-z)(n-h): a one-step euler ODEBlock with field (1-z)(n-h) from the "
                       "cell's weights", 0.0, dev, 1e-6, dev <= 1e-6,
                 notes="float32, batch 32, input 8, hidden 16; measured = max |ODEBlock - GRUCell|.")


def g3(ctx: Context) -> Claim:
    ctx.manual_seed(73)
    dim = 8
    f = MLPField(dim, hidden=16).double()
    x = torch.randn(dim, dtype=torch.float64, generator=ctx.generator(74)).requires_grad_(True)
    target = torch.randn(dim, dtype=torch.float64, generator=ctx.generator(75))
    alpha = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    y = solvers.solve(f, x, torch.stack([alpha.new_zeros(()), alpha]), method="euler").ys[-1]
    loss = 0.5 * ((y - target) ** 2).sum()
    gx, ga = torch.autograd.grad(loss, (x, alpha))
    with torch.no_grad():
        hx = f(None, x)
        r = x + alpha * hx - target
        jh = jacobian(lambda v: f(None, v), x.detach())
        gx_ref = r + alpha * (jh.T @ r)
        ga_ref = r @ hx
    block = ODEBlock(f, method="euler", steps=1, t1=0.3)
    x2 = x.detach().clone().requires_grad_(True)
    (gx_block,) = torch.autograd.grad(0.5 * ((block(x2) - target) ** 2).sum(), x2)
    meas = {"grad_x (tensor t1)": float((gx - gx_ref).norm() / gx_ref.norm()),
            "grad_alpha (tensor t1)": float(abs(ga - ga_ref) / abs(ga_ref)),
            "grad_x (ODEBlock t1=alpha)": float((gx_block - gx_ref).norm() / gx_ref.norm())}
    ok = all(v <= 1e-12 for v in meas.values())
    from ._stab_train import g3_training  # the empirical half (a report): train alpha from {0, 0.1, 1}

    ctx.tick("G3 training")
    trained = g3_training(ctx)
    for key, row in trained.items():
        meas[f"trained {key} (report)"] = row
    return Claim("G3", "y = x + alpha h(x): grad_x = (y-t) + alpha J_h^T (y-t), dl/dalpha = <y-t, h(x)>; alpha is t1 "
                       "of a one-step euler block", {k: 0.0 for k in meas}, meas, "1e-12 relative", ok,
                 notes="MLPField dim 8, alpha = 0.3 as a tensor end time of solvers.solve (and as t1 of an "
                       "ODEBlock for grad_x); holds is judged on this exact half. Empirical half (reported): "
                       "stem Linear(2, 8) -> x + alpha h(x) (MLPField(8, 16)) -> Linear(8, 2) on circles (400 "
                       "samples), Adam lr 1e-2, 150 full-batch steps (--full: 600), alpha learnable from 0, 0.1, 1; "
                       "dl/dalpha at the first step, the final alpha and test accuracy.")


MEASURES = {"F1": f1, "F2": f2, "G1": g1, "G2": g2, "G3": g3}
