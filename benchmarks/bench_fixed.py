"""Overhead of the fixed-step loop: ``solvers.odeint(method="euler")`` against a hand-written
residual loop ``y = y + h * f(t, y)`` (a ResNet), 10 steps, MLP field 2 -> 64 -> 64 -> 2
(tanh), batch 256, float32, one thread.

Measured in one process, repeats interleaved, medians reported. Three modes: forward under
``torch.no_grad`` (inference), forward with autograd recording (the training forward) and
forward + backward. A second, tiny field (``f = -y`` on a 256x2 state) exposes the per-solve
and per-step overhead on its own. Goal: ratio <= 1.05 on the MLP.

Run: ``python -m benchmarks.bench_fixed [--quick]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from tqdm import tqdm

import solvers

from ._report import pyplot, save_figure, write_table

STEPS, H = 10, 0.1


def make_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))


def make_cases(field, y0):
    t = torch.tensor([0.0, STEPS * H])
    t0 = torch.tensor(0.0)
    opts = dict(step_size=H)

    def ours():
        return solvers.odeint(field, y0, t, method="euler", options=opts)[-1]

    def hand():
        y = y0
        for _ in range(STEPS):
            y = y + H * field(t0, y)
        return y

    # same numbers (float32 rounding of the two update forms aside)
    with torch.no_grad():
        torch.testing.assert_close(ours(), hand(), rtol=1e-5, atol=1e-6)
    return ours, hand


def timed(fn, mode, inner):
    if mode == "forward (no_grad)":
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            return (time.perf_counter() - t0) / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        out = fn()
        if mode == "forward+backward":
            out.square().sum().backward()
    return (time.perf_counter() - t0) / inner


def measure(ours, hand, mode, repeats, inner):
    for _ in range(3):  # warm-up
        timed(ours, mode, inner)
        timed(hand, mode, inner)
    a, b = [], []
    for _ in range(repeats):  # interleaved
        a.append(timed(ours, mode, inner))
        b.append(timed(hand, mode, inner))
    return statistics.median(a), statistics.median(b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    repeats, inner = (7, 5) if args.quick else (31, 10)

    net = make_mlp()
    y_mlp = torch.randn(256, 2)
    y_tiny = torch.randn(256, 2)
    fields = {"MLP 2-64-64-2": (lambda t, y: net(y), y_mlp), "tiny (f=-y)": (lambda t, y: -y, y_tiny)}
    modes = ["forward (no_grad)", "forward (autograd)", "forward+backward"]
    rows = []
    for fname, (field, y0) in fields.items():
        y0 = y0.clone().requires_grad_(True)
        ours, hand = make_cases(field, y0)
        for mode in tqdm(modes, desc=fname, leave=False):
            a, b = measure(ours, hand, mode, repeats, inner)
            rows.append((fname, mode, a * 1e6, b * 1e6, a / b, (a - b) * 1e6))
            print(f"{fname:16s} {mode:20s} odeint {a * 1e6:8.1f} us  hand {b * 1e6:8.1f} us  ratio {a / b:5.3f}  overhead {(a - b) * 1e6:7.1f} us/solve")

    lines = [
        "# bench_fixed: odeint(method='euler') vs a hand-written residual loop",
        "",
        f"10 Euler steps, batch 256, float32, torch {torch.__version__}, 1 thread, {platform.processor() or platform.machine()}; "
        f"medians of {repeats} interleaved repeats x {inner} solves. The machine was shared with other jobs while measuring.",
        "",
        "| field | mode | odeint (us) | hand loop (us) | ratio | overhead (us/solve) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {f} | {m} | {a:.1f} | {b:.1f} | {r:.3f} | {o:.1f} |" for f, m, a, b, r, o in rows]
    path = write_table("fixed.md", "\n".join(lines))
    _plot(rows, "fixed.png")
    print(f"wrote {path}")


def _plot(rows, name):
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{f}\n{m}" for f, m, *_ in rows]
    ax.bar(range(len(rows)), [r[4] for r in rows], color="tab:blue")
    ax.axhline(1.05, color="tab:red", ls="--", label="goal 1.05")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=6)
    ax.set_ylabel("time ratio odeint / hand loop")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, name)


if __name__ == "__main__":
    main()
