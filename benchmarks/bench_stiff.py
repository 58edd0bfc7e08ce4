"""Stiff problems: radau5 and the implicit ESDIRK pairs against scipy's Radau and BDF, and dopri5.

What it compares (one process): on Van der Pol with mu = 1000 and on the Robertson
chemical kinetics system, every solver is run at the same ``rtol``/``atol`` and judged
against a reference from scipy's Radau at ``rtol = 1e-10``: relative error at the final
time, vector-field evaluations (plus Jacobian evaluations), steps and wall time, and the
wall-time ratio against scipy's Radau. ``dopri5`` is capped with ``max_num_steps`` and
reported as "gave up after N steps" when it hits the cap, to show why stiff problems need
implicit methods.

Batched case: 1024 independent Van der Pol oscillators with mu log-spaced in [100, 1000]
on [0, 20], one ``radau5`` solve of the (1024, 2) state (the error norm is the worst
sample's RMS, so every sample meets the tolerance) against a loop of scipy Radau solves
(all 1024 in a full run, 64 extrapolated in ``--quick``); the largest difference of the
final states is reported.

torch runs on one thread (``torch.set_num_threads(1)``), like scipy: on a shared machine
the intra-op thread pool spins on busy cores and made small batched LU and einsum calls
20-700x slower (measured: lu_factor_ex of 1024 6x6 matrices 52 ms on 2 threads, 2.6 ms on 1).

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


def batched(quick: bool, B: int = 1024, T: float = 20.0):
    """One radau5 solve of B Van der Pol oscillators vs a loop of scipy Radau solves."""
    mu = torch.logspace(2.0, 3.0, B, dtype=torch.float64)

    def f(t, y):  # (B, 2)
        return torch.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], dim=1)

    def worst_rms(e):
        return torch.sqrt(torch.mean(e * e, dim=1)).max()

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64).repeat(B, 1)
    t = torch.tensor([0.0, T], dtype=torch.float64)
    with torch.no_grad():  # warm-up: the first batched Jacobian imports torch's vmap machinery (seconds)
        solvers.solve(f, y0, t * 1e-4, method="radau5", rtol=1e-6, atol=1e-8, options=dict(norm=worst_rms))
    t0 = time.perf_counter()
    with torch.no_grad():
        sol = solvers.solve(f, y0, t, method="radau5", rtol=1e-6, atol=1e-8, options=dict(norm=worst_rms))
    ours = time.perf_counter() - t0
    idx = np.linspace(0, B - 1, min(64, B)).astype(int) if quick else np.arange(B)
    t0 = time.perf_counter()
    diff = 0.0
    for i in tqdm(idx, desc="scipy Radau loop"):
        m = float(mu[i])
        r = solve_ivp(lambda s, y: [y[1], m * (1 - y[0] ** 2) * y[1] - y[0]], (0, T), [2.0, 0.0], method="Radau", rtol=1e-6, atol=1e-8)
        diff = max(diff, float(np.max(np.abs(r.y[:, -1] - sol.ys[-1, i].numpy()) / (np.abs(r.y[:, -1]) + 1e-8))))
    loop = (time.perf_counter() - t0) * B / len(idx)
    s = sol.stats
    print(f"batched VdP x{B}: radau5 {ours:.2f}s ({s.n_steps} steps, {s.n_rejected} rejected), scipy loop {loop:.2f}s"
          f"{f' (extrapolated from {len(idx)})' if quick else ''}, ratio {loop / ours:.1f}x, max rel. diff {diff:.2e}")
    return dict(B=B, T=T, ours=ours, loop=loop, steps=s.n_steps, rejected=s.n_rejected, diff=diff, extrapolated=len(idx) if quick else 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    cap = 20000 if args.quick else 100000
    with torch.no_grad():  # warm-up: the first autograd Jacobian imports torch's vmap machinery (seconds)
        for m in ("radau5", "kvaerno3", "kvaerno5"):
            solvers.solve(vdp_torch, torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1e-3], dtype=torch.float64), method=m)
    for p in problems(args.quick):
        ref = solve_ivp(p["f_np"], (0, p["T"]), p["y0"], method="Radau", rtol=1e-10, atol=p["atol"] * 1e-4).y[:, -1]
        runs = [("scipy Radau", lambda: run_scipy(p, "Radau")), ("scipy BDF", lambda: run_scipy(p, "BDF"))]
        runs += [(m, lambda m=m: run_ours(p, m)) for m in ("radau5", "kvaerno3", "kvaerno5")]
        runs += [("dopri5", lambda: run_ours(p, "dopri5", max_steps=cap))]
        for name, fn in tqdm(runs, desc=p["name"]):
            r = fn()
            err = rel_err(r["y"], ref) if not r["note"] else float("nan")
            rows.append(dict(problem=p["name"], solver=name, err=err, **{k: r[k] for k in ("nfev", "njev", "steps", "time", "note")}))
            print(f"{p['name']:>20} {name:>12}: rel.err {err:9.2e}  f-evals {r['nfev']:8d}  jac {r['njev']:6d}  steps {r['steps']:7d}  {r['time']:7.2f}s {r['note']}")
    write(rows, args.quick, batched(args.quick))


def write(rows, quick, batch):
    radau = {r["problem"]: r["time"] for r in rows if r["solver"] == "scipy Radau"}
    lines = [
        "# Stiff problems: radau5 and implicit ESDIRK vs scipy Radau/BDF and dopri5",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, CPU only (no GPU in this task); "
        f"{'quick run' if quick else 'full run'}, torch on 1 thread. The machine was shared with other engineers' jobs while measuring, so times are noisy.",
        "Reference: scipy Radau at rtol=1e-10. Relative error at the final time. f-evals exclude Jacobian evaluations (ours: "
        "autograd Jacobians, each one forward + n VJPs; scipy: finite-difference Jacobians whose evaluations count in f-evals).",
        "",
        "| problem | solver | rel. error | f-evals | Jacobians | steps | time (s) | time / scipy Radau | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = r["time"] / radau[r["problem"]]
        lines.append(f"| {r['problem']} | {r['solver']} | {r['err']:.2e} | {r['nfev']} | {r['njev']} | {r['steps']} | {r['time']:.2f} | {ratio:.1f} | {r['note']} |")
    b = batch
    extra = f" (time extrapolated from {b['extrapolated']})" if b["extrapolated"] else ""
    lines += [
        "",
        f"## Batched: {b['B']} Van der Pol oscillators, mu log-spaced in [100, 1000], t in [0, {b['T']:g}], rtol=1e-6, atol=1e-8",
        "",
        "| solver | time (s) | steps | speed-up | max rel. diff of final states |",
        "|---|---:|---:|---:|---:|",
        f"| radau5, one batched solve (worst-sample error norm) | {b['ours']:.2f} | {b['steps']} ({b['rejected']} rejected) | {b['loop'] / b['ours']:.1f}x | {b['diff']:.1e} |",
        f"| scipy Radau, loop of {b['B']} solves{extra} | {b['loop']:.2f} | | 1 | |",
    ]
    write_table("stiff.md", "\n".join(lines))
    plt = pyplot()

    probs = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(probs), figsize=(5.5 * len(probs), 4))
    for ax, prob in zip(np.atleast_1d(axes), probs):
        rs = [r for r in rows if r["problem"] == prob]
        names = [r["solver"] for r in rs]
        ax.bar(names, [r["nfev"] + r["njev"] for r in rs], color=["C0", "C0", "C1", "C2", "C2", "C3"][: len(rs)])
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
