"""The trained halves of CLAIMS.md F3, G3 and H3: tiny training runs (seconds each in the
default run, longer under ``--full``) whose numbers are reported beside the exact halves."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .._block import ODEBlock
from ..analysis import log_growth_slope, lyapunov_exponents, singular_values
from ..data import load_dataset
from ..fields import MLPField
from ..training import build_view_model, fit
from ._claims import Claim
from ._stab_common import Context

__all__ = ["MEASURES", "b4_trained", "euler_threshold", "f3", "g3_training", "h3_training", "trained_views"]


def _circles(ctx: Context):
    return load_dataset("circles", n_samples=240 if not ctx.full else 1000, seed=ctx.seed)


def trained_views(ctx: Context) -> dict:
    """MLPField classifiers on ``circles`` trained briefly in each view (cached on ``ctx``):
    ``view -> (model, test accuracy)``."""
    cache = ctx.cache.setdefault("trained_views", {})
    if cache:
        return cache
    data = _circles(ctx)
    epochs = 20 if ctx.full else 4
    for view in ("resnet", "implicit", "node"):
        ctx.tick(f"training {view}")
        ctx.manual_seed(91)
        model = build_view_model(view, data, width=8, field="unconstrained")
        res = fit(model, data, epochs=epochs, batch_size=32, lr=1e-2, seed=ctx.seed, device="cpu", quiet=True)
        cache[view] = (res.model.double().eval(), float(res.metrics[-1].get("test_acc", float("nan"))))
    return cache


def f3(ctx: Context) -> Claim:
    views = trained_views(ctx)
    meas = {}
    for view, (model, acc) in views.items():
        ctx.tick(f"F3 {view}")
        block = model.blocks[0]
        field, cfg = block.field, block.solver_config()
        with torch.no_grad():
            z = model.stem(_circles(ctx).x_test[:4].double())
        # QR (Benettin) lambda_1 of the trained field's flow x' = f(x), from a stem output
        res = lyapunov_exponents(field, z[0].clone(), t_end=10.0 if not ctx.full else 200.0, dt=0.1,
                                 method="rk4", window=1.0, transient=2.0, n_exponents=1)
        # autograd slope of mean log sigma_max(dx(T)/dx(0)) of the view's own solver on T in [1, 4]
        times = [1.0, 2.0, 3.0, 4.0]
        logs = []
        for T in times:
            b = ODEBlock(field, method=cfg["method"], steps=None if cfg["steps"] is None else int(4 * T),
                         t1=T, rtol=1e-5, atol=1e-7,
                         options=None if cfg["options"] is None else {"root_finder": "newton", "root_rtol": 1e-10})
            logs.append(float(np.mean([math.log(float(singular_values(lambda v: b(v), x).max())) for x in z])))
        meas[view] = {"lambda_1 (QR)": res["exponents"][0], "lambda_1 (autograd slope)": log_growth_slope(times, logs),
                      "test accuracy": acc}
    return Claim("F3", "lambda_1 of trained MLPField flows per view (lambda_1 > 0 explodes, < 0 vanishes, ~0 is the "
                       "edge of chaos): a report", "report", meas, "report", "report",
                 notes="MLPClassifier(width 8, unconstrained MLPField) on circles (240 samples), Adam lr 1e-2, 4 "
                       "epochs (--full: 20 on 1000 samples) per view; lambda_1 by Benettin QR (rk4, dt 0.1, T=10 "
                       "after a transient of 2; --full T=200) from a stem output, and as the least-squares slope of "
                       "the mean log sigma_max(dx(T)/dx(0)) over 4 test points (stem outputs), T = 1..4, with the "
                       "view's own method (fixed methods at 4 steps per unit time, dopri5 at rtol 1e-5, implicit "
                       "solves by newton at root_rtol 1e-10). Accuracies are those of a few epochs, not converged.")


def euler_threshold(J: torch.Tensor) -> torch.Tensor:
    """The largest Euler step ``h`` with every ``h lam`` of ``J`` (``[..., d, d]``) in the
    stability disk ``|1 + h lam| <= 1``: ``min -2 Re(lam) / |lam|^2``; 0 when an eigenvalue has
    ``Re(lam) >= 0`` (no step keeps that direction from growing)."""
    lam = torch.linalg.eigvals(J)
    re, mag2 = lam.real, lam.abs() ** 2
    per = torch.where(re < 0, -2 * re / torch.where(mag2 > 0, mag2, torch.ones_like(mag2)), torch.zeros_like(re))
    return per.min(dim=-1).values


def _euler_growth(field, x0: torch.Tensor, hs: torch.Tensor, n_steps: int, gen: torch.Generator) -> torch.Tensor:
    """Per step size ``h`` (``[H]``): the largest mean log growth per step of a tangent vector
    of ``n_steps`` Euler steps ``x -> x + h f(x)`` from each point of ``x0`` (``[P, d]``), over
    the second half of the steps (the first settles): > 0 means the iterate is unstable
    (forward blow-up is gradient blow-up, ``dy_N/dy_0 = prod (I + h J_f)``)."""
    H, (P, d) = hs.shape[0], x0.shape
    x = x0.repeat(H, 1)  # (H P, d): every candidate step from every point, one batch
    h = hs.repeat_interleave(P)[:, None]
    v = torch.randn(H * P, d, dtype=x.dtype, generator=gen)
    v = v / v.norm(dim=1, keepdim=True)
    logs = torch.zeros(H * P, dtype=x.dtype)
    t0 = torch.zeros((), dtype=x.dtype)
    f = lambda y: field(t0, y)  # noqa: E731
    for n in range(n_steps):
        fx, jv = torch.func.jvp(f, (x,), (v,))
        x, v = x + h * fx, v + h * jv
        norm = v.norm(dim=1)
        if n >= n_steps // 2:
            logs += torch.log(norm)
        v = v / norm[:, None]
    # rows do not interact: a candidate that overflowed (NaN or inf) has blown up; no host read per step
    logs = torch.where(torch.isfinite(logs), logs, torch.full_like(logs, float("inf")))
    return (logs / (n_steps - n_steps // 2)).reshape(H, P).max(dim=1).values


def b4_trained(ctx: Context) -> dict:
    """CLAIMS.md B4's trained half: the Euler step at which a trained block's field makes the
    iterate unstable, against ``h*`` predicted from the spectrum of ``J_f`` along its trajectory.

    The block: a parabolic field ``-K^T tanh(K x + b) + (A - A^T) x - 0.5 x``
    (:class:`ParabolicMLPField`, expansion -0.5: the symmetric part of its Jacobian is at most
    ``-0.5 I``, so every eigenvalue has ``Re <= -0.5``, the flow settles and ``h*`` is defined)
    trained as a 4-step Euler ResNet on a regression target."""
    from ..fields import ParabolicMLPField

    dim = 8
    gen = ctx.generator(44)
    x = torch.randn(64, dim, dtype=torch.float64, generator=gen)
    target = 2 * torch.tanh(x @ torch.randn(dim, dim, dtype=torch.float64, generator=gen))
    ctx.manual_seed(45)
    field = ParabolicMLPField(dim, hidden=32, expansion=-0.5).double()
    block = ODEBlock(field, method="euler", steps=4, t1=1.0)
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    losses = []
    for _ in range(200 if ctx.full else 60):
        opt.zero_grad()
        loss = ((block(x) - target) ** 2).mean()
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    field.requires_grad_(False)
    x0 = x[:8]
    t0 = torch.zeros((), dtype=x0.dtype)
    with torch.no_grad():  # the flow's trajectory from the inputs (rk4, dt 0.05, to t = 20): where it settles
        import solvers

        traj = solvers.odeint(field, x0, torch.linspace(0.0, 20.0, 81, dtype=x0.dtype), method="rk4",
                              options=dict(step_size=0.05))
    J = torch.func.vmap(torch.func.jacrev(lambda y: field(t0, y[None])[0]))(traj.reshape(-1, dim))  # (81 P, d, d)
    h_traj = euler_threshold(J).reshape(81, -1)  # (times, points)
    h_end, h_min = float(h_traj[-1].min()), float(h_traj.min())
    lo, hi = 0.05 * h_end, 4.0 * h_end
    with torch.no_grad():
        for rnd in range(3):  # bracket the first unstable step on a grid, then refine
            hs = torch.as_tensor(np.geomspace(lo, hi, 16) if rnd == 0 else np.linspace(lo, hi, 16), dtype=x0.dtype)
            growth = _euler_growth(field, x0, hs, 1000, ctx.generator(46))
            bad = torch.nonzero(growth > 0)[:, 0]
            if bad.numel() == 0 or int(bad[0]) == 0:
                return {"measured blow-up step": None, "h* settled": h_end,
                        "note": f"no bracket in [{lo:.3g}, {hi:.3g}]", "loss": [losses[0], losses[-1]]}
            i = int(bad[0])
            lo, hi = float(hs[i - 1]), float(hs[i])
    measured = 0.5 * (lo + hi)
    return {"measured blow-up step (Euler, 1000 steps)": measured,
            "h* = min -2 Re(lam)/|lam|^2 of J_f where the trajectory settles (t=20)": h_end,
            "h* min along the trajectory (t in [0, 20])": h_min,
            "ratio measured / h*(settled)": measured / h_end,
            "ratio measured / h*(min along)": measured / h_min,
            "training loss (first, last)": [losses[0], losses[-1]]}


def g3_training(ctx: Context) -> dict:
    """Train ``y = x + alpha h(x)`` (alpha = t1 of a one-step euler block, learnable) from each alpha_0."""
    data = load_dataset("circles", n_samples=400, seed=ctx.seed)
    x_tr, y_tr = data.x_train.double(), data.y_train
    x_te, y_te = data.x_test.double(), data.y_test
    steps = 600 if ctx.full else 150
    out = {}
    for a0 in (0.0, 0.1, 1.0):
        ctx.manual_seed(76)
        stem, head = nn.Linear(2, 8).double(), nn.Linear(8, 2).double()
        field = MLPField(8, hidden=16).double()
        alpha = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
        params = [*stem.parameters(), *head.parameters(), *field.parameters(), alpha]
        opt = torch.optim.Adam(params, lr=1e-2)

        def logits(x):
            z = stem(x)  # the one-step euler block with t1 = alpha (the exact half shows they agree); written
            return head(z + alpha * field(None, z))  # out since solvers refuse the empty interval t1 = 0

        first_grad = None
        for i in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(logits(x_tr), y_tr)
            loss.backward()
            if first_grad is None:
                first_grad = float(alpha.grad)
            opt.step()
        with torch.no_grad():
            acc = float((logits(x_te).argmax(-1) == y_te).double().mean())
        out[f"alpha_0={a0:g}"] = {"dl/dalpha at start": first_grad, "alpha": float(alpha.detach()), "test accuracy": acc}
    return out


def h3_training(ctx: Context) -> dict:
    """An unconstrained MLPField ResNet (h=1, L=20), SGD lr 0.1, with and without clipping."""
    gen = ctx.generator(86)
    x = torch.randn(128, 8, dtype=torch.float64, generator=gen)
    target = torch.sin(x @ torch.randn(8, 8, dtype=torch.float64, generator=gen))
    steps = 200 if ctx.full else 30
    out = {}
    for tau in (None, 1.0, 0.1):
        ctx.manual_seed(87)
        field = MLPField(8, hidden=32).double()
        block = ODEBlock(field, method="euler", steps=20, t1=20.0)
        opt = torch.optim.SGD(field.parameters(), lr=0.1)
        losses, clipped = [], 0
        for _ in range(steps):
            opt.zero_grad()
            loss = ((block(x) - target) ** 2).mean()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
            loss.backward()
            if tau is not None:
                norm = float(torch.nn.utils.clip_grad_norm_(field.parameters(), tau))
                clipped += norm > tau
            opt.step()
        finite = all(math.isfinite(v) for v in losses)
        fin = [v for v in losses if math.isfinite(v)]
        out["none" if tau is None else f"tau={tau:g}"] = {
            "initial loss": losses[0], "max loss": max(fin), "final loss": losses[-1], "finite": finite,
            "steps run": len(losses), "clipped fraction": None if tau is None else clipped / len(losses)}
    return out


def c1_trained(ctx: Context) -> dict:
    """Parabolic fields trained through backward Euler (h = 1/4, L = 4); their Lipschitz ratio
    against the bound (1 - h nu)^-L, which holds for any weights."""
    from ..analysis import lipschitz_ratio
    from ..fields import ParabolicMLPField

    dim, L, h = 16, 4, 0.25
    gen = ctx.generator(13)
    x = torch.randn(64, dim, dtype=torch.float64, generator=gen)
    target = 3 * torch.tanh(x @ torch.randn(dim, dim, dtype=torch.float64, generator=gen))
    xs = torch.randn(1000 if ctx.full else 100, dim, dtype=torch.float64, generator=gen)
    out = {}
    for nu in ((-1.0, 0.0, 1.0, 2.0) if ctx.full else (0.0, 2.0)):
        ctx.tick(f"C1 training nu={nu:g}")
        ctx.manual_seed(14)
        field = ParabolicMLPField(dim, hidden=32, expansion=nu).double()
        impl = ODEBlock(field, method="implicit_euler", steps=L, t1=L * h,
                        options=dict(root_rtol=1e-12, root_atol=1e-14, max_iters=50))
        opt = torch.optim.Adam(field.parameters(), lr=1e-2)
        loss0 = None
        for _ in range(100 if ctx.full else 10):
            opt.zero_grad()
            loss = ((impl(x) - target) ** 2).mean()
            loss0 = float(loss.detach()) if loss0 is None else loss0
            loss.backward()
            opt.step()
        with torch.no_grad():
            r = lipschitz_ratio(impl, xs, generator=ctx.generator(12))
            final = float(((impl(x) - target) ** 2).mean())
        out[f"trained nu={nu:g} h={h:g}"] = {"implicit": max(r["pairs"], r["power"]), "bound": (1 - h * nu) ** (-L),
                                             "loss": [loss0, final]}
    return out


MEASURES = {"F3": f3}
