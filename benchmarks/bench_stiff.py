"""Stiff problems: the implicit ESDIRK pairs against scipy's Radau and BDF, and dopri5.

What it compares (one process): on Van der Pol with mu = 1000 and on the Robertson
chemical kinetics system, every solver is run at the same ``rtol``/``atol`` and judged
against a reference from scipy's Radau at ``rtol = 1e-10``: relative error at the final
time, vector-field evaluations (plus Jacobian evaluations), steps and wall time.
``dopri5`` is capped with ``max_num_steps`` and reported as "gave up after N steps" when
it hits the cap, to show why stiff problems need implicit methods.

Run ``python -m benchmarks.bench_stiff`` (``--quick`` for shorter intervals). Writes
``benchmarks/results/stiff.md`` and ``benchmarks/results/stiff.png``. CPU only.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm.auto import tqdm

import solvers

from ._report import RESULTS, pyplot, save_figure, write_table

MU = 1000.0


def vdp_np(t, y):
    return [y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]]


def vdp_torch(t, y):
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def rober_np(t, y):
    a, b, c = y
    return [-0.04 * a + 1e4 * b * c, 0.04 * a - 1e4 * b * c - 3e7 * b * b, 3e7 * b * b]


def rober_torch(t, y):
    a, b, c = y[0], y[1], y[2]
    return torch.stack([-0.04 * a + 1e4 * b * c, 0.04 * a - 1e4 * b * c - 3e7 * b * b, 3e7 * b * b])


def problems(quick: bool):
    return [
        dict(name="Van der Pol mu=1000", f_np=vdp_np, f_t=vdp_torch, y0=[2.0, 0.0], T=500.0 if quick else 3000.0, rtol=1e-6, atol=1e-8),
        dict(name="Robertson", f_np=rober_np, f_t=rober_torch, y0=[1.0, 0.0, 0.0], T=1e2 if quick else 1e5, rtol=1e-6, atol=1e-10),
    ]


def rel_err(y, ref):
    return float(np.max(np.abs(y - ref) / (np.abs(ref) + 1e-12)))


def run_scipy(p, method):
    t0 = time.perf_counter()
    sol = solve_ivp(p["f_np"], (0, p["T"]), p["y0"], method=method, rtol=p["rtol"], atol=p["atol"])
    dt = time.perf_counter() - t0
    return dict(y=sol.y[:, -1], nfev=sol.nfev, njev=sol.njev, steps=sol.t.size - 1, time=dt, note="" if sol.success else sol.message)


def run_ours(p, method, max_steps=None):
    y0 = torch.tensor(p["y0"], dtype=torch.float64)
    t = torch.tensor([0.0, p["T"]], dtype=torch.float64)
    opts = {} if max_steps is None else dict(max_num_steps=max_steps)
    t0 = time.perf_counter()
    with torch.no_grad():
        sol = solvers.solve(p["f_t"], y0, t, method=method, rtol=p["rtol"], atol=p["atol"], options=opts, raise_on_failure=False)
    dt = time.perf_counter() - t0
    s = sol.stats
    note = "" if sol.success else f"gave up after {s.n_steps} steps at t={sol.t_fail:.4g} ({sol.status.name})"
    y = sol.ys[-1].numpy() if sol.success else np.full(len(p["y0"]), np.nan)
    return dict(y=y, nfev=s.n_f_evals, njev=s.n_jac_evals, steps=s.n_steps, time=dt, note=note, root_iters=s.mean_root_iters)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    cap = 20000 if args.quick else 100000
    for p in problems(args.quick):
        ref = solve_ivp(p["f_np"], (0, p["T"]), p["y0"], method="Radau", rtol=1e-10, atol=p["atol"] * 1e-4).y[:, -1]
        runs = [("scipy Radau", lambda: run_scipy(p, "Radau")), ("scipy BDF", lambda: run_scipy(p, "BDF"))]
        runs += [(m, lambda m=m: run_ours(p, m)) for m in ("kvaerno3", "kvaerno5")]
        runs += [("dopri5", lambda: run_ours(p, "dopri5", max_steps=cap))]
        for name, fn in tqdm(runs, desc=p["name"]):
            r = fn()
            err = rel_err(r["y"], ref) if not r["note"] else float("nan")
            rows.append(dict(problem=p["name"], solver=name, err=err, **{k: r[k] for k in ("nfev", "njev", "steps", "time", "note")}))
            print(f"{p['name']:>20} {name:>12}: rel.err {err:9.2e}  f-evals {r['nfev']:8d}  jac {r['njev']:6d}  steps {r['steps']:7d}  {r['time']:7.2f}s {r['note']}")
    write(rows, args.quick)


def write(rows, quick):
    lines = [
        "# Stiff problems: implicit ESDIRK vs scipy Radau/BDF and dopri5",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, CPU only (no GPU in this task); "
        f"{'quick run' if quick else 'full run'}. The machine was shared with other engineers' jobs while measuring, so times are noisy.",
        "Reference: scipy Radau at rtol=1e-10. Relative error at the final time. f-evals exclude Jacobian evaluations (ours: "
        "autograd Jacobians, each one forward + n VJPs; scipy: finite-difference Jacobians whose evaluations count in f-evals).",
        "",
        "| problem | solver | rel. error | f-evals | Jacobians | steps | time (s) | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['solver']} | {r['err']:.2e} | {r['nfev']} | {r['njev']} | {r['steps']} | {r['time']:.2f} | {r['note']} |")
    write_table("stiff.md", "\n".join(lines))
    plt = pyplot()

    probs = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(probs), figsize=(5.5 * len(probs), 4))
    for ax, prob in zip(np.atleast_1d(axes), probs):
        rs = [r for r in rows if r["problem"] == prob]
        names = [r["solver"] for r in rs]
        ax.bar(names, [r["nfev"] + r["njev"] for r in rs], color=["C0", "C0", "C2", "C2", "C3"][: len(rs)])
        ax.set_yscale("log")
        ax.set_title(prob)
        ax.set_ylabel("f-evals + Jacobians (log)")
        for i, r in enumerate(rs):
            ax.text(i, r["nfev"] + r["njev"], "gave up" if r["note"] else f"{r['err']:.0e}", ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    save_figure(fig, "stiff.png")
    print(f"wrote {RESULTS / 'stiff.md'} and stiff.png")


if __name__ == "__main__":
    main()
