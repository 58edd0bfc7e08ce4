"""Overhead of the fixed-step loop: ``solvers.odeint(method="euler")`` against a hand-written
residual loop ``y = y + h * f(t, y)`` (a ResNet), 10 steps, MLP field 2 -> 64 -> 64 -> 2
(tanh), batch 256, float32, one thread.

Measured in one process, repeats interleaved, medians reported. Three modes: forward under
``torch.no_grad`` (inference), forward with autograd recording (the training forward) and
forward + backward. A second, tiny field (``f = -y`` on a 256x2 state) exposes the per-solve
and per-step overhead on its own. Goal: ratio <= 1.05 on the MLP.

A third table puts eager against ``torch.compile(fullgraph=True)`` (inductor) for three
fixed-step solves on the same MLP: 10 Euler steps of ``odeint`` on a shared grid, an rk4
``ODEBlock`` (steps=10; forward, and forward+backward in the full run) and Euler on a
per-sample grid ``t`` ``[256, 11]`` (each row its own 10 intervals), in one process,
medians of interleaved repeats; compile time is reported apart (results/fixed_compile.md).
On CUDA (``--device cuda``) the compiled function is also run with
``mode="reduce-overhead"`` (CUDA graphs).

Run: ``python -m benchmarks.bench_fixed [--quick] [--no-compile | --compile-only] [--device cuda]``
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


def compile_cases(net, device):
    """``name -> (fn, y0)``: the three fixed-step solves the compile table measures."""
    import odenet

    field = lambda t, y: net(y)  # noqa: E731
    y0 = torch.randn(256, 2, device=device)
    g = torch.Generator().manual_seed(1)
    gaps = torch.rand(256, 10, generator=g, dtype=torch.float64) + 0.1
    tb = torch.cat([torch.rand(256, 1, generator=g, dtype=torch.float64), gaps / gaps.sum(1, keepdim=True)], dim=1).cumsum(1).to(device)
    block = odenet.ODEBlock(net_field(net), method="rk4", steps=STEPS, t1=STEPS * H).to(device)
    return {
        "odeint euler, 10 steps, shared grid": (lambda y: solvers.odeint(field, y, [0.0, STEPS * H], method="euler", options=dict(step_size=H))[-1], y0),
        "ODEBlock rk4, steps=10": (block, y0),
        "odeint euler, per-sample t [256, 11]": (lambda y: solvers.odeint(field, y, tb, method="euler")[-1], y0),
    }


def net_field(net):
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    return Field()


def measure_compiled(net, quick, repeats, inner, device):
    """Rows ``(case, mode, variant, eager s, compiled s, compile s)``: every case forward under
    no_grad; the ODEBlock (a training case) also forward+backward unless ``quick``."""
    variants = [("inductor", {})] + ([("CUDA graphs", {"mode": "reduce-overhead"})] if device.type == "cuda" else [])
    rows = []
    for name, (fn, y0) in compile_cases(net, device).items():
        modes = ["forward (no_grad)"] + ([] if quick or not name.startswith("ODEBlock") else ["forward+backward"])
        y0 = y0.clone().requires_grad_(True)
        for vname, kw in variants:
            torch._dynamo.reset()
            comp = torch.compile(fn, fullgraph=True, **kw)
            run_eager, run_comp = (lambda: fn(y0)), (lambda: comp(y0))  # noqa: B023
            for mode in tqdm(modes, desc=f"{name} [{vname}]", leave=False):
                t0 = time.perf_counter()
                timed(run_comp, mode, 1)  # compiles (once per grad mode)
                compile_s = time.perf_counter() - t0
                with torch.no_grad():
                    torch.testing.assert_close(comp(y0), fn(y0), rtol=1e-4, atol=1e-5)
                a, b = measure(run_eager, run_comp, mode, repeats, inner)
                rows.append((name, mode, vname, a, b, compile_s))
                print(f"{name:36s} {mode:18s} {vname:11s} eager {a * 1e6:8.1f} us  compiled {b * 1e6:8.1f} us  "
                      f"eager/compiled {a / b:5.2f}  (compile {compile_s:.0f} s)")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats; compiled forward (no_grad) only")
    ap.add_argument("--no-compile", action="store_true", help="skip the eager-vs-compiled table")
    ap.add_argument("--compile-only", action="store_true", help="only the eager-vs-compiled table")
    ap.add_argument("--device", default="cpu", help="device of the compile table (cpu or cuda)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    repeats, inner = (7, 5) if args.quick else (31, 10)
    net = make_mlp()
    if not args.compile_only:
        eager_vs_hand(net, repeats, inner)
    if not args.no_compile:
        eager_vs_compiled(net, repeats, inner, torch.device(args.device), args.quick)


def eager_vs_hand(net, repeats, inner):
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


def eager_vs_compiled(net, repeats, inner, device, quick):
    crow = measure_compiled(net.to(device), quick, repeats, inner, device)
    lines = [
        "# bench_fixed: eager vs torch.compile(fullgraph=True)",
        "",
        f"MLP 2-64-64-2 (tanh), batch 256, float32, {device.type}, torch {torch.__version__}, 1 thread; medians of {repeats} "
        f"interleaved repeats x {inner} solves, one process. fullgraph=True raises on a graph break, so every row compiled "
        "with none. eager/compiled > 1: compiled is faster. Compile time: the first call (inductor; its on-disk cache may hold kernels from earlier runs). "
        "The machine was shared with other jobs while measuring.",
        "",
        "| solve | mode | compiled with | eager (us) | compiled (us) | eager/compiled | compile time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {c} | {m} | {v} | {a * 1e6:.1f} | {b * 1e6:.1f} | {a / b:.2f} | {cs:.0f} |" for c, m, v, a, b, cs in crow]
    path = write_table("fixed_compile.md", "\n".join(lines))
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
