"""Where the fixed-step path's Python time goes: per-solve and per-step overhead, and a profile.

Part 1 fits the overhead of ``solvers.solve(method="euler")`` over a hand-written loop doing
the same arithmetic (``y = torch.add(y, f(t, y), alpha=h)``) on a field that costs almost
nothing (``f = -y``, state 256 x 64, float32), at 1, 10 and 50 steps: the difference at one
step is the per-solve overhead, the slope the per-step overhead. The same for
``ODEBlock(LayerwiseField(L blocks), "euler", steps=L)`` against ``for b in blocks: x = x +
b(x)``. Part 2 (``--profile``) prints cProfile's top entries for the ODEBlock forward.

Timings are CPU time of this thread (``time.thread_time``), 20th percentile of interleaved
repeats, one torch thread: on a shared machine that is steadier than wall time.

Run: ``python -m benchmarks.profile_fixed [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch
from torch import nn

import odenet
import solvers


class _Neg(nn.Module):
    def forward(self, x):
        return -x


def _p20(fns: dict, repeats: int) -> dict:
    samples = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(20):
                fn()
        for _ in range(repeats):
            for k, fn in fns.items():
                t0 = time.thread_time()
                fn()
                fn()
                samples[k].append((time.thread_time() - t0) / 2)
    return {k: sorted(v)[len(v) // 5] for k, v in samples.items()}


def overhead(repeats: int) -> list:
    y0 = torch.randn(256, 64)
    neg = lambda t, y: -y  # noqa: E731
    fns = {}
    for n in (1, 10, 50):
        t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        opts = dict(step_size=1.0 / n, check_finite=False)
        fns[f"solve{n}"] = lambda t=t, opts=opts: solvers.solve(neg, y0, t, method="euler", options=opts)

        def hand(n=n):
            y, h = y0, 1.0 / n
            for _ in range(n):
                y = torch.add(y, neg(None, y), alpha=h)
            return y

        fns[f"hand{n}"] = hand
        blocks = [_Neg() for _ in range(n)]
        block = odenet.ODEBlock(odenet.LayerwiseField(blocks, t1=n), method="euler", steps=n)
        fns[f"block{n}"] = lambda block=block: block(y0)

        def resnet(blocks=blocks):
            x = y0
            for b in blocks:
                x = x + b(x)
            return x

        fns[f"resnet{n}"] = resnet
    m = _p20(fns, repeats)
    rows = []
    for what, ours, ref in (("solvers.solve", "solve", "hand"), ("ODEBlock", "block", "resnet")):
        d = {n: (m[f"{ours}{n}"] - m[f"{ref}{n}"]) * 1e6 for n in (1, 10, 50)}
        rows.append((what, d[1], (d[50] - d[1]) / 49, d[10]))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", action="store_true", help="also print cProfile's top entries of an ODEBlock forward")
    p.add_argument("--repeats", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("overhead over the hand-written loop (us, CPU time, 20th percentile):")
    for what, per_solve, per_step, at10 in overhead(args.repeats):
        print(f"  {what:14s} per solve {per_solve:7.1f}  per step {per_step:5.2f}  at 10 steps {at10:7.1f}")
    if args.profile:
        torch.manual_seed(0)
        blocks = [nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64)) for _ in range(10)]
        block = odenet.ODEBlock(odenet.LayerwiseField(blocks, t1=10), method="euler", steps=10)
        x = torch.randn(256, 64)
        with torch.no_grad():
            for _ in range(20):
                block(x)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(300):
                block(x)
            prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
