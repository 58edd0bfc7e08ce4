"""CLAIMS.md section A: gradient flow through depth (plain chains, ResNets, ODE scaling)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .._block import ODEBlock
from ..analysis import gradient_gain, jacobian, singular_values
from ..fields import LayerwiseField, MLPField
from ._claims import Claim
from ._stab_common import Context, exact_normalise

__all__ = ["MEASURES"]

_TIGHT = dict(root_rtol=1e-14, root_atol=0.0)


def _scalar_layer(a: float) -> nn.Linear:
    lin = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.fill_(a)
    return lin


def a1(ctx: Context) -> Claim:
    a, L = 0.5, 20
    layers = [_scalar_layer(a) for _ in range(L)]

    def plain(x):
        for lin in layers:
            x = lin(x)
        return x

    block = ODEBlock(LayerwiseField(layers, t1=float(L)), method="euler", steps=L)
    x0 = torch.ones(1, dtype=torch.float64)
    g_plain, g_res = gradient_gain(plain, x0), gradient_gain(block, x0)
    exp = {"plain": a ** L, "residual": (1 + a) ** L, "ratio": ((1 + a) / a) ** L}
    meas = {"plain": g_plain, "residual": g_res, "ratio": g_res / g_plain}
    ok = all(abs(meas[k] - exp[k]) <= 1e-12 * exp[k] for k in exp)
    return Claim("A1", "scalar highway: plain x<-ax gains |a|^L, residual x<-x+ax gains |1+a|^L (a=0.5, L=20)",
                 exp, meas, "1e-12 relative", ok,
                 notes="autograd through a plain chain of Linear(1,1) layers vs the same layers as a "
                       "LayerwiseField under ODEBlock(euler, h=1). 3325 is itself an explosion: the ratio is "
                       "large because the plain chain vanishes.")


class _Linear1(nn.Module):
    """The scalar field f(t, x) = a x."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, t, x):
        return self.a * x


def a2(ctx: Context) -> Claim:
    a, depths = 0.5, (20, 64, 128, 256)
    field = _Linear1(a)
    x0 = torch.ones(1, dtype=torch.float64)
    exp, meas, ok = {}, {}, True
    for L in depths:
        ctx.tick(f"A2 L={L}")
        for method, formula, tol in (("euler", (1 + a / L) ** L, 1e-12),
                                     ("implicit_euler", (1 - a / L) ** (-L), 1e-10)):
            block = ODEBlock(field, method=method, steps=L, t1=1.0, options=_TIGHT if method != "euler" else None)
            g = gradient_gain(block, x0)
            key = f"{method} L={L}"
            exp[key], meas[key] = formula, g
            ok &= abs(g - formula) <= tol * formula
            if L >= 64:
                ok &= abs(g - math.exp(a)) <= 2e-3 * math.exp(a)
    exp["limit e^a"] = math.exp(a)
    meas["limit e^a"] = meas["euler L=256"]
    return Claim("A2", "ODE scaling h=T/L: Euler gain (1+aT/L)^L and backward Euler (1-aT/L)^-L both tend to "
                       "e^{aT} (a=0.5, T=1)", exp, meas,
                 "1e-12 (euler), 1e-10 (implicit); within 0.2% of e^0.5 for L >= 64", ok,
                 notes="gradient of ODEBlock(f=ax, steps=L, t1=1) by autograd (euler) and the implicit-function "
                       "theorem (implicit_euler, root_rtol=1e-14).")


def _lip_mlp(dim: int, c: float, hidden=None) -> MLPField:
    """A tanh MLPField with exactly ||W1|| = 1 and ||W2|| = c (SVD), so Lip <= c."""
    f = MLPField(dim, hidden=hidden or dim, depth=1, activation="tanh").double()
    exact_normalise(f.linears[0], 1.0)
    exact_normalise(f.linears[1], c)
    return f


def a3(ctx: Context) -> Claim:
    ctx.manual_seed(3)
    dim, cs, depths = 16, (0.05, 0.1, 0.3), ((5, 10, 20, 50) if not ctx.full else (5, 10, 20, 30, 40, 50))
    x0 = torch.randn(dim, dtype=torch.float64, generator=ctx.generator(3))
    meas, exp, ok = {}, {}, True
    for c in cs:
        for L in depths:
            ctx.tick(f"A3 c={c} L={L}")
            fields = [_lip_mlp(dim, c) for _ in range(L)]
            for view, t1 in (("h=1", float(L)), ("h=1/L", 1.0)):
                h = t1 / L
                block = ODEBlock(LayerwiseField(fields, t1=t1), method="euler", steps=L)
                s = singular_values(block, x0)
                lo, hi = (1 - h * c) ** L, (1 + h * c) ** L
                key = f"c={c} L={L} {view}"
                exp[key] = [lo, hi]
                meas[key] = [float(s.min()), float(s.max())]
                ok &= float(s.min()) >= lo * (1 - 1e-6) and float(s.max()) <= hi * (1 + 1e-6)
            plain_w = [exact_normalise(nn.Linear(dim, dim).double(), c) for _ in range(L)]

            def plain(x, ws=plain_w):
                for w in ws:
                    x = torch.tanh(w(x))
                return x

            smax = float(singular_values(plain, x0).max())
            exp[f"c={c} L={L} plain"] = c ** L
            meas[f"c={c} L={L} plain"] = smax
            ok &= smax <= c ** L * (1 + 1e-6)
    return Claim("A3", "||J_f|| <= c per step: all singular values of prod(I + hJ_l) lie in [(1-hc)^L, (1+hc)^L]; "
                       "a plain chain has sigma_max <= c^L", exp, meas, "bounds, slack 1e-6", ok,
                 notes="untied tanh MLP fields (dim 16) with ||W1||=1, ||W2||=c set exactly by SVD, as a "
                       "LayerwiseField under ODEBlock(euler); SVD of the autograd Jacobian at one input. "
                       "expected = [lower, upper] bound (plain: the upper bound).")


def a4(ctx: Context) -> Claim:
    ctx.manual_seed(4)
    dim = 16
    x0 = torch.randn(dim, dtype=torch.float64, generator=ctx.generator(4))
    exp, meas, ok = {}, {}, True
    for scale in (0.01, 0.1, 1.0):
        f = MLPField(dim, hidden=32, depth=1).double()
        with torch.no_grad():
            for p in f.parameters():
                p.mul_(scale / 0.1)  # default init has weights ~ U(+-1/sqrt(n)); scale it
        jf = jacobian(lambda x: f(None, x), x0)
        block = ODEBlock(f, method="euler", steps=1, t1=1.0)
        jb = jacobian(block, x0)
        ef = torch.linalg.eigvals(jf)
        eb = torch.linalg.eigvals(jb)
        # match eig(I + J) to 1 + eig(J) by nearest neighbours
        target = (1 + ef).numpy()
        got = eb.numpy()
        dev = max(float(np.min(np.abs(got - t))) for t in target)
        spread = float(np.max(np.abs(got - 1)))
        smax = float(torch.linalg.svdvals(jb).max())
        meas[f"scale {scale}"] = {"eig match": dev, "max|eig(I+J)-1|": spread, "sigma_max(I+J)": smax}
        exp[f"scale {scale}"] = {"eig match": "<= 1e-10", **({"max|eig(I+J)-1|": "<= 0.05"} if scale == 0.01 else {})}
        ok &= dev <= 1e-10
        if scale == 0.01:
            ok &= spread <= 0.05
    return Claim("A4", "eig(I + hJ_f) = 1 + h eig(J_f); at small initial weights a residual block's eigenvalues sit "
                       "near 1", exp, meas, "1e-10 (identity), 0.05 (scale 0.01)", ok,
                 notes="MLPField dim 16, width 32, weights scaled so the spread is `scale` times the default "
                       "init / 0.1; one euler step h=1. Singular values (not eigenvalues) bound gradients for "
                       "non-normal J_f: sigma_max reported.")


def a5(ctx: Context) -> Claim:
    ctx.manual_seed(5)
    dim, c = 32, 0.5
    depths = (4, 8, 16, 32, 64, 128, 256)
    f = _lip_mlp(dim, c)
    w_plain = exact_normalise(nn.Linear(dim, dim).double(), c)
    x0 = torch.randn(dim, dtype=torch.float64, generator=ctx.generator(5))
    v = torch.randn(dim, dtype=torch.float64, generator=ctx.generator(50))
    curves = {"plain": [], "resnet": [], "ode": [], "implicit": []}
    exp, meas, ok = {}, {}, True
    for L in depths:
        ctx.tick(f"A5 L={L}")

        def plain(x, L=L):
            for _ in range(L):
                x = torch.tanh(w_plain(x))
            return x

        views = {"plain": plain,
                 "resnet": ODEBlock(f, method="euler", steps=L, t1=float(L)),
                 "ode": ODEBlock(f, method="euler", steps=L, t1=1.0),
                 "implicit": ODEBlock(f, method="implicit_euler", steps=L, t1=1.0, options=_TIGHT)}
        bounds = {"plain": (0.0, c ** L), "resnet": (c ** L, (1 + c) ** L),
                  "ode": ((1 - c / L) ** L, (1 + c / L) ** L),
                  "implicit": ((1 + c / L) ** (-L), (1 - c / L) ** (-L))}
        for name, fn in views.items():
            g = gradient_gain(fn, x0, v)
            curves[name].append(g)
            lo, hi = bounds[name]
            slack = 1e-6
            ok &= lo * (1 - slack) <= g <= hi * (1 + slack)
            meas[f"{name} L={L}"] = g
            exp[f"{name} L={L}"] = [lo, hi]
    ratios = {k: max(curves[k]) / min(curves[k]) for k in ("ode", "implicit")}
    # the bounds' ratio: sup of the upper bounds (e^c) over inf of the lower ones ((1 - c/4)^4, L = 4)
    bound_ratio = math.exp(c) / (1 - c / 4) ** 4
    for k, r in ratios.items():
        meas[f"{k} max/min over L"] = r
        exp[f"{k} max/min over L"] = f"<= {bound_ratio:.3f}"
        ok &= r <= bound_ratio
    meas["plain g_256"] = curves["plain"][-1]
    exp["plain g_256"] = "< 1e-30"
    ok &= curves["plain"][-1] < 1e-30
    ctx.figures["gradient_vs_depth"] = {"depths": list(depths), "curves": curves, "c": c}
    return Claim("A5", "gradient norm vs depth (Lip f <= 0.5): plain vanishes, ResNet may explode, ODE-scaled and "
                       "implicit stay in depth-independent bounds", exp, meas,
                 "bounds, slack 1e-6; max/min <= 2.81", ok,
                 notes=f"g_L = |dl/dx_0| / |dl/dx_L| for a fixed random dl/dx_L; one tied tanh MLPField (width 32, "
                       f"||W1||=1, ||W2||=0.5 exactly) as ResNet (euler h=1), ODE (euler h=1/L), implicit "
                       f"(implicit_euler h=1/L, IFT gradient); plain x<-tanh(Wx), ||W||=0.5. The max/min bound is "
                       f"e^c / (1-c/4)^4 = {bound_ratio:.3f} (CLAIMS.md: 2.81).",
                 details={"curves": curves, "depths": list(depths)})


MEASURES = {"A1": a1, "A2": a2, "A3": a3, "A4": a4, "A5": a5}
