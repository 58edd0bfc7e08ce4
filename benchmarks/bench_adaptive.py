"""Adaptive solves against torchdiffeq 0.2.5 and torchode 1.0.1 on one problem.

Problem: an MLP vector field 2 -> 64 -> 64 -> 2 (tanh, fixed random weights, output scaled
by 4 so that the solve needs a few dozen steps) on a batch of 256 states, float32, t from 0 to 1 with 5 output times, forward only (no_grad). Methods
dopri5 and tsit5 (torchdiffeq 0.2.5 has no tsit5) at rtol = atol = 1e-3 and 1e-6. Error:
max abs difference at the output times against scipy DOP853 at rtol = atol = 1e-12 on the
same field in float64. nfe: calls of the vector field (each call evaluates the whole
batch). torchode controls the step size per sample (IntegralController, the same I
controller as ours); its vector-field calls are counted the same way.

Measured in one process, one thread, repeats interleaved, medians reported.
Run: ``python -m benchmarks.bench_adaptive [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from scipy.integrate import solve_ivp
from tqdm import tqdm

import solvers

from ._report import pyplot, save_figure, write_table



class Counted(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.n = net, 0

    def forward(self, t, y):
        self.n += 1
        return 4.0 * self.net(y)


class Scaled(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return 4.0 * self.net(y)


def make_problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    for p in net.parameters():
        p.requires_grad_(False)
    y0 = torch.randn(256, 2)
    t = torch.linspace(0.0, 1.0, 5)
    return net, y0, t


def reference(net, y0, t):
    net64 = _copy64(net)
    f = lambda tt, y: 4.0 * net64(torch.from_numpy(y).reshape(-1, 2)).reshape(-1).numpy()
    sol = solve_ivp(f, (0.0, 1.0), y0.double().reshape(-1).numpy(), method="DOP853", rtol=1e-12, atol=1e-12, t_eval=t.double().numpy())
    return torch.from_numpy(sol.y.T).reshape(len(t), *y0.shape)


def _copy64(net):
    import copy

    return copy.deepcopy(net).double()


def runners(net, y0, t, method, tol, compiled=True):
    import torchdiffeq
    import torchode as to

    field = Counted(net)
    out = {}

    def ours():
        return solvers.odeint(field, y0, t, method=method, rtol=tol, atol=tol)

    out["solvers"] = ours
    if compiled:
        plain = Scaled(net)  # no Python counter: a changing int on the module would recompile every call

        def ours_compiled():
            sol = solvers.solve(plain, y0, t, method=method, rtol=tol, atol=tol, options=dict(compile_step=True))
            field.n += sol.stats.n_f_evals
            return sol.ys

        out["solvers compiled"] = ours_compiled
    if method in ("dopri5",):
        def tdq():
            return torchdiffeq.odeint(field, y0, t, method=method, rtol=tol, atol=tol)

        out["torchdiffeq"] = tdq
    term = to.ODETerm(lambda tt, y: field(tt, y))
    step = (to.Dopri5 if method == "dopri5" else to.Tsit5)(term=term)
    ctrl = to.IntegralController(atol=tol, rtol=tol, term=term)
    solver = to.AutoDiffAdjoint(step, ctrl)
    t_eval = t.expand(y0.shape[0], -1)

    def tode():
        sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
        return sol.ys.transpose(0, 1)  # (T, batch, 2)

    out["torchode"] = tode
    return field, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled-step rows (option compile_step, inductor)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    repeats = 5 if args.quick else 15
    net, y0, t = make_problem()
    ref = reference(net, y0, t)
    rows = []
    with torch.no_grad():
        for method in ("dopri5", "tsit5"):
            for tol in (1e-3, 1e-6):
                field, fns = runners(net, y0, t, method, tol, compiled=not args.no_compile)
                nfe, err = {}, {}
                for name, fn in fns.items():
                    field.n = 0
                    ys = fn()
                    nfe[name] = field.n
                    err[name] = float((ys.double() - ref).abs().max())
                    fn()  # warm-up
                times = {k: [] for k in fns}
                for _ in tqdm(range(repeats), desc=f"{method} tol={tol:g}", leave=False):
                    for name, fn in fns.items():
                        t0 = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t0)
                med = {k: statistics.median(v) for k, v in times.items()}
                for name in fns:
                    r_tdq = med[name] / med["torchdiffeq"] if "torchdiffeq" in med else float("nan")
                    r_to = med[name] / med["torchode"]
                    rows.append((method, tol, name, med[name] * 1e3, nfe[name], err[name], r_tdq, r_to))
                    print(f"{method:6s} tol={tol:7.0e} {name:16s} {med[name] * 1e3:8.2f} ms  nfe {nfe[name]:5d}  err {err[name]:.2e}  "
                          f"time/torchdiffeq {r_tdq:5.2f}  time/torchode {r_to:5.2f}")
    lines = [
        "# bench_adaptive: dopri5 / tsit5 against torchdiffeq 0.2.5 and torchode 1.0.1",
        "",
        "4 x MLP 2-64-64-2 (tanh), batch 256, float32, t in [0, 1] with 5 outputs, forward (no_grad), 1 thread; "
        f"medians of {repeats} interleaved repeats. Error: max abs vs scipy DOP853 (1e-12, float64). "
        "'solvers compiled': option `compile_step=True` (each step one torch.compile'd function, inductor; the "
        "compile itself, before the timed repeats, not counted). "
        "torchode steps per sample (its nfe = calls of the batched field). The machine was shared with other jobs.",
        "",
        "| method | tol | library | time (ms) | nfe | max error | time / torchdiffeq | time / torchode |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {tol:g} | {lib} | {ms:.2f} | {n} | {e:.2e} | {a:.2f} | {b:.2f} |" for m, tol, lib, ms, n, e, a, b in rows]
    path = write_table("adaptive.md", "\n".join(lines))
    _plot(rows, "adaptive.png")
    print("wrote", path)


def _plot(rows, name):
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for lib, marker in (("solvers", "o"), ("solvers compiled", "D"), ("torchdiffeq", "s"), ("torchode", "^")):
        pts = [(ms, e, f"{m} {tol:g}") for m, tol, l, ms, n, e, *_ in rows if l == lib]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=lib)
            for x, y, s in pts:
                ax.annotate(s, (x, y), fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time per solve (ms)")
    ax.set_ylabel("max error")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, name)


if __name__ == "__main__":
    main()
