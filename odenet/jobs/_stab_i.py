"""CLAIMS.md section I (optional): small exact combinatorics of residual networks."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.sparse import csgraph, diags

import solvers

from ..fields import MLPField
from ._claims import Claim
from ._stab_common import Context

__all__ = ["MEASURES"]


def i1(ctx: Context) -> Claim:
    n = 10
    # unrolled residual chain prod (I + f_k): one path per subset of the blocks a signal passes through
    res_lengths = [len(s) for k in range(n + 1) for s in itertools.combinations(range(n), k)]
    # DenseNet: a path is an increasing sequence of nodes from input (0) to output (n): a composition of n
    dense_lengths = [len(s) + 1 for k in range(n) for s in itertools.combinations(range(1, n), k)]
    meas = {"residual paths": len(res_lengths), "residual mean length": float(np.mean(res_lengths)),
            "dense paths": len(dense_lengths), "dense mean length": float(np.mean(dense_lengths))}
    exp = {"residual paths": 2 ** n, "residual mean length": n / 2, "dense paths": 2 ** (n - 1),
           "dense mean length": (n + 1) / 2}
    ok = all(abs(meas[k] - exp[k]) <= 1e-12 * max(1, exp[k]) for k in exp)
    return Claim("I1", "N=10 residual blocks: 2^N paths of mean length N/2 = 5.0; DenseNet 2^(N-1) paths of mean "
                       "(N+1)/2 = 5.5", exp, meas, "exact", ok, notes="enumerated.")


def i2(ctx: Context) -> Claim:
    n = 101
    chain = diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], shape=(n, n)).tolil()
    d = csgraph.shortest_path(chain.tocsr(), unweighted=True)
    chain[0, n - 1] = chain[n - 1, 0] = 1
    d2 = csgraph.shortest_path(chain.tocsr(), unweighted=True)
    off = ~np.eye(n, dtype=bool)
    meas = {"chain mean": float(d[off].mean()), "chain diameter": float(d.max()),
            "shortcut mean": float(d2[off].mean()), "shortcut diameter": float(d2.max())}
    exp = {"chain mean": (n + 1) / 3, "chain diameter": n - 1, "shortcut mean": (n + 1) / 4,
           "shortcut diameter": (n - 1) / 2}
    ok = all(abs(meas[k] - exp[k]) <= 1e-12 * exp[k] for k in exp)
    return Claim("I2", "101-node chain: mean distance (n+1)/3 = 34, diameter 100; a first-to-last shortcut: "
                       "(n+1)/4 = 25.5, diameter 50", exp, meas, "exact", ok,
                 notes="BFS distances (scipy csgraph) over all ordered pairs of distinct nodes.")


def i3(ctx: Context) -> Claim:
    x = torch.linspace(0, 1, 2 ** 14 + 1, dtype=torch.float64)
    peaks = {}
    for L in range(1, 7):
        y = x.clone()
        for _ in range(L):
            y = 2 * torch.relu(y) - 4 * torch.relu(y - 0.5)
        interior = (y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:])
        peaks[L] = int(interior.sum())
    ctx.manual_seed(93)
    field = MLPField(1, hidden=16).double()
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(3.0)
        out = solvers.solve(field, x[:, None], torch.tensor([0.0, 1.0], dtype=torch.float64), method="rk4",
                            options=dict(step_size=0.01)).ys[-1, :, 0]
    monotone = bool(torch.all(out[1:] >= out[:-1]))
    exp = {**{f"peaks L={L}": 2 ** (L - 1) for L in peaks}, "1-D ODE flow monotone": True}
    meas = {**{f"peaks L={L}": v for L, v in peaks.items()}, "1-D ODE flow monotone": monotone}
    ok = all(meas[k] == exp[k] for k in exp)
    return Claim("I3", "hat(x) = 2ReLU(x) - 4ReLU(x-1/2) composed L times has 2^(L-1) peaks; a 1-D ODE flow is "
                       "monotone and cannot fit it", exp, meas, "exact", ok,
                 notes="peaks counted on a grid of 2^14+1 points (dyadic, so every peak is a grid point); the "
                       "flow of a random 1-D MLPField (rk4, h=0.01) on the sorted grid stays sorted.")


MEASURES = {"I1": i1, "I2": i2, "I3": i3}
