"""Events against torchdiffeq: a bouncing ball's impact times and their gradients.

A ball dropped from height ``h`` onto a ground at height ``r`` loses a fraction ``a`` of
its speed at each impact; the n-th impact is at
``t_n = t0 + t_1 (1 + 2 sum_{k<n} (1-a)^k)`` with ``t_1 = sqrt(2 (h - r) / g)``. Both
libraries run the same script, the logic of torchdiffeq's ``examples/bouncing_ball.py``
(``odeint_event`` per bounce, a 1e-7 upward nudge, reflection), with only the import
changed; the script prints the impact times, the gradient of the last impact time with
respect to ``(h, v0, t0, g, r, a)`` by ``odeint`` and by ``odeint_adjoint``, the closed
form, and the wall time (interleaved repeats in one process, median). The ground height
``r`` enters only the event function (not the state): torchdiffeq's rerouting ignores
parameters of the event function, so its ``dt/dr`` is 0; ``solvers`` gives the exact one.

Run: ``python -m benchmarks.bench_events [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torchdiffeq

import solvers

from ._report import write_table

F64 = torch.float64
NAMES = ("h", "v0", "t0", "g", "r", "a")
VALUES = dict(h=10.0, v0=0.0, t0=0.0, g=9.8, r=0.2, a=0.2)


def impacts(lib, p: dict, n: int, adjoint: bool):
    """The first n impact times (tuple state (height, velocity), as in the example)."""
    g, r, a = p["g"], p["r"], p["a"]
    fall = lambda t, s: (s[1], -g * torch.ones_like(s[1]))  # noqa: E731
    kw = dict(odeint_interface=lib.odeint_adjoint, adjoint_params=(g,)) if adjoint else {}
    state, t0, out = (p["h"].reshape(1), p["v0"].reshape(1)), p["t0"].reshape(1), []
    for _ in range(n):
        t0, sol = lib.odeint_event(fall, state, t0, event_fn=lambda t, s: s[0] - r, rtol=1e-8, atol=1e-8, **kw)
        out.append(t0)
        state = (sol[0][-1] + 1e-7, -(1 - a) * sol[1][-1])
    return out


def t_exact(n: int, h, v0, t0, g, r, a) -> float:
    """The n-th impact time (without the 1e-7 nudges, which move it by ~1e-8)."""
    s = math.sqrt(v0 * v0 + 2 * g * (h - r))  # speed at the first impact
    return t0 + (v0 + s) / g + sum(2 * (1 - a) ** k * s / g for k in range(1, n))


def closed_form(n: int) -> tuple:
    """t_n and its gradient (central differences of the closed form, step 1e-6)."""
    grads = {}
    for k in NAMES:
        hi, lo = dict(VALUES), dict(VALUES)
        hi[k] += 1e-6
        lo[k] -= 1e-6
        grads[k] = (t_exact(n, **hi) - t_exact(n, **lo)) / 2e-6
    return t_exact(n, **VALUES), grads


def measure(lib, n: int, adjoint: bool):
    p = {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in VALUES.items()}
    t0 = time.perf_counter()
    ts = impacts(lib, p, n, adjoint)
    ts[-1].backward()
    return time.perf_counter() - t0, [float(t.detach()) for t in ts], {k: float(v.grad) if v.grad is not None else 0.0 for k, v in p.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 bounces, 3 repeats")
    ap.add_argument("--bounces", type=int, default=None)
    args = ap.parse_args(argv)
    n = args.bounces or (3 if args.quick else 10)
    reps = 3 if args.quick else 5
    exact_t, exact_g = closed_form(n)
    rows = []
    for adjoint in (False, True):
        res = {"torchdiffeq": [], "solvers": []}
        for _ in range(reps):
            for name, lib in (("torchdiffeq", torchdiffeq), ("solvers", solvers)):
                res[name].append(measure(lib, n, adjoint))
        for name in res:
            wall = statistics.median(r[0] for r in res[name])
            _, ts, grads = res[name][0]
            rows.append((name, "odeint_adjoint" if adjoint else "odeint", ts[-1], grads, wall))
    lines = [f"Bouncing ball, {n} impacts, rtol=atol=1e-8, float64 (`python -m benchmarks.bench_events{' --quick' if args.quick else ''}`)", "",
             f"| library | interface | t_{n} (exact {exact_t:.10f}) | " + " | ".join(f"dt/d{k} (exact {exact_g[k]:.6f})" for k in NAMES) + " | wall s (fwd+bwd) |",
             "|---|---|---|" + "---|" * len(NAMES) + "---|"]
    for name, iface, tn, grads, wall in rows:
        lines.append(f"| {name} | {iface} | {tn:.10f} | " + " | ".join(f"{grads[k]:.6f}" for k in NAMES) + f" | {wall:.3f} |")
    text = "\n".join(lines)
    print(text)
    write_table("events.md", text)


if __name__ == "__main__":
    main()
