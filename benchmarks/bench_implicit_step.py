"""Cost of one implicit (backward Euler) step of an MLP field, per root finder.

What it compares (one process, interleaved repeats): one backward-Euler step
``z = y + h f(z)`` of a batch 256 x dim 64 MLP field (hidden 128, tanh), with
``h * Lip(f) ~ 0.5`` so that every method converges, solved by

- per-sample Newton (64x64 Jacobians, batched LU),
- Newton with ONE dense Jacobian of the whole flattened batch (what a whole-batch
  Newton/Broyden does): measured on small batches and extrapolated, because at
  256 x 64 the matrix alone is 16384^2 floats,
- Anderson (m=5), Picard (fixed point), Newton–Krylov (GMRES with JVPs),

reporting the time of the step (no grad), the time of step + IFT backward, the root-finder
iterations, field evaluations and the working memory of the method (analytic: the tensors
it keeps, e.g. Jacobians, LU factors, Anderson history, Krylov basis). All in float32.

Run ``python -m benchmarks.bench_implicit_step`` (``--quick`` for fewer repeats). Writes
``benchmarks/results/implicit_step.md`` and ``implicit_step.png``. CPU only (no GPU here).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from tqdm.auto import tqdm

import solvers

from ._report import RESULTS, pyplot, save_figure, write_table

DIM, HIDDEN, BATCH = 64, 128, 256


class MLPField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(DIM, HIDDEN)
        self.l2 = torch.nn.Linear(HIDDEN, DIM)
        with torch.no_grad():  # spectral norms so that Lip(f) <= 5
            self.l1.weight /= torch.linalg.matrix_norm(self.l1.weight, 2) / 2.5
            self.l2.weight /= torch.linalg.matrix_norm(self.l2.weight, 2) / 2.0

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y)))


def finders():
    return {
        "newton (per-sample)": solvers.Newton(),
        "newton (whole-batch dense)": solvers.Newton(per_sample=False),
        "anderson": solvers.Anderson(m=5),
        "fixed_point": solvers.FixedPoint(),
        "newton_krylov": solvers.NewtonKrylov(),
    }


def working_memory(name, B, n, f32=4):
    if name.startswith("newton (per"):
        return 2 * B * n * n * f32  # Jacobians + LU factors
    if name.startswith("newton (whole"):
        return 2 * (B * n) ** 2 * f32
    if name == "anderson":
        return 2 * 6 * B * n * f32  # x and residual histories (m + 1 each)
    if name == "newton_krylov":
        return 21 * B * n * f32  # Krylov basis (restart + 1 vectors)
    return 2 * B * n * f32


def one_step(field, y0, finder, backward):
    h = 0.1
    t = torch.tensor([0.0, h], dtype=torch.float64)
    opts = dict(step_size=h, root_finder=finder)
    if backward:
        y = y0.detach().requires_grad_(True)
        sol = solvers.solve(field, y, t, method="implicit_euler", rtol=1e-4, atol=1e-6, options=opts)
        sol.ys[-1].square().sum().backward()
    else:
        with torch.no_grad():
            sol = solvers.solve(field, y0, t, method="implicit_euler", rtol=1e-4, atol=1e-6, options=opts)
    return sol.stats


def timed(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    field = MLPField()
    repeats = 3 if args.quick else 7
    rows = []
    y_full = torch.randn(BATCH, DIM)
    cases = [(name, BATCH) for name in finders() if not name.startswith("newton (whole")]
    cases += [("newton (whole-batch dense)", b) for b in ((4, 8) if args.quick else (4, 8, 16, 32))]
    for name, B in tqdm(cases, desc="implicit step"):
        finder = finders()[name]
        y0 = y_full[:B]
        one_step(field, y0, finder, False)  # warm up
        t_fwd, st = timed(lambda: one_step(field, y0, finder, False), repeats)
        t_bwd, stb = timed(lambda: one_step(field, y0, finder, True), repeats)
        rows.append(dict(name=name, B=B, fwd=t_fwd, fwdbwd=t_bwd, iters=st.max_root_iters, fevals=st.n_f_evals,
                         jac=st.n_jac_evals, bwd_iters=stb.n_backward_root_iters, mem=working_memory(name, B, DIM)))
        r = rows[-1]
        print(f"{name:>28} B={B:4d}: step {1e3 * r['fwd']:8.2f} ms  step+grad {1e3 * r['fwdbwd']:8.2f} ms  iters {r['iters']:3d}  "
              f"f-evals {r['fevals']:3d}  backward iters {r['bwd_iters']:3d}  working memory {r['mem'] / 2**20:8.2f} MiB")
    # the whole-batch LU alone costs ~(B n)^3: time one LU of a 2048^2 matrix and scale it to (256*64)^2
    N, M = 2048, BATCH * DIM
    t_lu, _ = timed(lambda: torch.linalg.lu_factor(torch.randn(N, N) + N * torch.eye(N)), 3)
    est = t_lu * (M / N) ** 3
    ref = next(r for r in rows if r["name"] == "newton (per-sample)")
    print(f"whole-batch dense Newton at B={BATCH}: LU alone ~{est:.0f} s ({t_lu:.3f} s for {N}^2, scaled by ({M}/{N})^3), "
          f"{working_memory('newton (whole', BATCH, DIM) / 2**30:.1f} GiB; per-sample Newton: {ref['fwd'] * 1e3:.1f} ms")
    for r in rows:
        if r["B"] == BATCH:
            print(f"ratio step time {r['name']} / per-sample newton: {r['fwd'] / ref['fwd']:.2f}")
    write(rows, est, args.quick)


def write(rows, est, quick):
    lines = [
        "# One implicit step: per-sample Newton vs whole-batch dense Newton vs Anderson vs Picard vs Newton–Krylov",
        "",
        f"Backward Euler, MLP field dim {DIM} (hidden {HIDDEN}, tanh, Lip <= 5, h = 0.1), float32, root rtol 1e-5 / atol 1e-7. "
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, CPU only (no GPU in this task); "
        f"{'quick run' if quick else 'full run'}; shared with other engineers' jobs while measuring (times noisy). "
        "Working memory is analytic (the tensors the root finder keeps).",
        "",
        "| root finder | batch | step (ms) | step + IFT grad (ms) | iterations | f-evals | Jacobians | backward iters | working memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['B']} | {1e3 * r['fwd']:.2f} | {1e3 * r['fwdbwd']:.2f} | {r['iters']} | {r['fevals']} | {r['jac']} | {r['bwd_iters']} | {r['mem'] / 2**20:.2f} |")
    lines += ["", f"Whole-batch dense Newton at batch {BATCH}: not run; its LU alone would take ~{est:.0f} s per step (a measured {2048}^2 LU scaled by (16384/2048)^3) and needs "
              f"{working_memory('newton (whole', BATCH, DIM) / 2**30:.1f} GiB for the Jacobian and its LU."]
    write_table("implicit_step.md", "\n".join(lines))
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["name"] for r in rows):
        rs = [r for r in rows if r["name"] == name]
        ax.plot([r["B"] for r in rs], [1e3 * r["fwd"] for r in rs], "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("ms per step (no grad)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, "implicit_step.png")
    print(f"wrote {RESULTS / 'implicit_step.md'} and implicit_step.png")


if __name__ == "__main__":
    main()
