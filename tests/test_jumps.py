"""``jump_t``: a known discontinuity costs about one step restart, not a cascade of
rejections, also when the times are float32 (the field sees float32 ``t``, so the stage
times next to a jump are nudged in float32 and stay on their side)."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq

import solvers

JUMPS = [0.5 + 0.9 * i + 0.05 * (i % 3) for i in range(10)]


def forcing(t):
    k = sum(float(t) >= j for j in JUMPS)
    return 2.0 * (k % 2) - 1.0


class Relax(torch.nn.Module):
    """``dy/dt = u(t) - y`` with a square-wave ``u`` switching at ``JUMPS``."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def forward(self, t, y):
        self.n += 1
        return forcing(t) - y


def exact(ts, y0=1.0):
    out, y, t0 = [], y0, 0.0
    edges = JUMPS + [math.inf]
    k = 0
    for t in ts:
        while edges[k] <= t:  # advance to the jump, switch the forcing
            u = 2.0 * (k % 2) - 1.0
            y = u + (y - u) * math.exp(-(edges[k] - t0))
            t0, k = edges[k], k + 1
        u = 2.0 * (k % 2) - 1.0
        out.append(u + (y - u) * math.exp(-(t - t0)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jump_t_costs_less_than_torchdiffeq(dtype):
    y0 = torch.tensor([1.0], dtype=dtype)
    t = torch.linspace(0, 10, 5, dtype=torch.float64)
    jumps = torch.tensor(JUMPS, dtype=dtype)
    f = Relax()
    ref = torchdiffeq.odeint(f, y0, t, method="dopri5", options=dict(jump_t=jumps))
    n_ref = f.n
    f.n = 0
    sol = solvers.solve(f, y0, t, method="tsit5", options=dict(jump_t=jumps))
    assert f.n < n_ref
    assert sol.stats.n_rejected <= 2.5 * len(JUMPS)
    want = torch.tensor(exact(t.tolist()), dtype=dtype)
    tol = 2e-6 if dtype == torch.float32 else 1e-8
    torch.testing.assert_close(sol.ys[:, 0], want, rtol=0, atol=tol)
    torch.testing.assert_close(ref[:, 0], want, rtol=0, atol=tol)
