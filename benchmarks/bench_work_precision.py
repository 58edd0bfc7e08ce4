"""Work-precision: error against function evaluations for every registered explicit adaptive
method on three nonlinear problems, with scipy's RK45 and DOP853 as comparison.

Problems (float64): Van der Pol (mu = 1, t in [0, 6]), Lotka-Volterra (t in [0, 5]) and the
pendulum (t in [0, 10]), 7 output times each. Error: max abs difference at the output
times against scipy DOP853 at rtol = atol = 1e-13. Tolerances rtol = atol = 1e-3 ... 1e-10
(low-order pairs stop earlier: their cost grows like tol^(-1/order)).

Run: ``python -m benchmarks.bench_work_precision [--quick]``
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm import tqdm

import solvers

from ._report import pyplot, save_figure, write_table



def van_der_pol(t, y):
    return torch.stack([y[1], (1 - y[0] ** 2) * y[1] - y[0]])


def lotka_volterra(t, y):
    return torch.stack([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])


def pendulum(t, y):
    return torch.stack([y[1], -torch.sin(y[0])])


PROBLEMS = {"van_der_pol": (van_der_pol, [2.0, 0.0], 6.0), "lotka_volterra": (lotka_volterra, [10.0, 5.0], 5.0), "pendulum": (pendulum, [2.5, 0.0], 10.0)}


def _np(f):
    return lambda t, y: f(torch.tensor(t, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)).numpy()


def tolerances(order, quick):
    lowest = {1: 1e-5, 2: 1e-6, 3: 1e-8}.get(order, 1e-10)
    tols = [10.0**-k for k in range(3, 11) if 10.0**-k >= lowest * 0.99]
    return tols[::2] if quick else tols


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    methods = sorted(n for n, c in solvers.METHODS.items() if c.adaptive and not c.implicit)
    rows = []  # (problem, method, tol, nfe, err)
    for pname, (f, y0, T) in PROBLEMS.items():
        t = np.linspace(0.0, T, 7)
        ref = solve_ivp(_np(f), (0, T), y0, method="DOP853", rtol=1e-13, atol=1e-13, t_eval=t).y.T
        for m in tqdm(methods + ["scipy RK45", "scipy DOP853"], desc=pname, leave=False):
            order = solvers.METHODS[m].order if m in solvers.METHODS else 5
            for tol in tolerances(order, args.quick):
                if m.startswith("scipy"):
                    r = solve_ivp(_np(f), (0, T), y0, method=m.split()[1], rtol=tol, atol=tol, t_eval=t)
                    nfe, ys = r.nfev, r.y.T
                else:
                    sol = solvers.solve(f, torch.tensor(y0, dtype=torch.float64), torch.tensor(t), method=m, rtol=tol, atol=tol)
                    nfe, ys = sol.stats.n_f_evals, sol.ys.numpy()
                rows.append((pname, m, tol, nfe, float(np.abs(ys - ref).max())))
    _write(rows, methods)


def _write(rows, methods):
    problems = list(PROBLEMS)
    names = methods + ["scipy RK45", "scipy DOP853"]
    lines = [
        "# bench_work_precision: function evaluations against error",
        "",
        "float64, error = max abs vs scipy DOP853 (rtol = atol = 1e-13) at 7 output times; rtol = atol = tol. "
        "Cells: nfe / error.",
        "",
    ]
    for p in problems:
        tols = sorted({r[2] for r in rows if r[0] == p}, reverse=True)
        lines += [f"## {p}", "", "| method | " + " | ".join(f"tol {x:.0e}" for x in tols) + " |", "|---" * (len(tols) + 1) + "|"]
        for m in names:
            cells = {r[2]: f"{r[3]} / {r[4]:.1e}" for r in rows if r[0] == p and r[1] == m}
            lines.append(f"| {m} | " + " | ".join(cells.get(x, "") for x in tols) + " |")
        lines.append("")
    # evaluations needed for error <= 1e-6 (interpolated in log-log), per method and problem
    lines += ["## nfe to reach max error 1e-6 (log-log interpolation)", "", "| method | " + " | ".join(problems) + " |", "|---" * (len(problems) + 1) + "|"]
    for m in names:
        lines.append(f"| {m} | " + " | ".join(_nfe_at(rows, p, m, 1e-6) for p in problems) + " |")
    path = write_table("work_precision.md", "\n".join(lines))
    for line in lines[-len(names) - 1 :]:
        print(line)
    _plot(rows, problems, names, "work_precision.png")
    print("wrote", path)


def _nfe_at(rows, p, m, target):
    pts = sorted((r[4], r[3]) for r in rows if r[0] == p and r[1] == m)
    for (e0, n0), (e1, n1) in zip(pts, pts[1:]):
        if e0 <= target <= e1 and e0 > 0:
            w = (np.log(target) - np.log(e0)) / (np.log(e1) - np.log(e0))
            return f"{np.exp(np.log(n0) + w * (np.log(n1) - np.log(n0))):.0f}"
    return "n/a"


def _plot(rows, problems, names, name):
    plt = pyplot()

    fig, axes = plt.subplots(1, len(problems), figsize=(5 * len(problems), 4))
    for ax, p in zip(axes, problems):
        for m in names:
            pts = sorted((r[3], r[4]) for r in rows if r[0] == p and r[1] == m)
            style = "--" if m.startswith("scipy") else "-"
            ax.loglog([x for x, _ in pts], [max(y, 1e-16) for _, y in pts], style, marker="o", ms=3, label=m)
        ax.set_title(p)
        ax.set_xlabel("function evaluations")
        ax.set_ylabel("max error")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, name)


if __name__ == "__main__":
    main()
