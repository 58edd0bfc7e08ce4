"""Per-sample time grids: one batched solve against a loop, torchode and torchdiffeq.

Problem (issue 11): B = 256 series, T = 20 irregular times each (a random start in [0, 1],
then sorted uniform times up to 5 later), a time-conditioned MLP field
``[y, t] (3) -> 64 -> 64 -> 2`` (tanh, fixed random weights), dopri5 at rtol = atol = 1e-5,
float32, one thread. Compared:

- ``solvers`` batched: ``odeint(field, y0, t)`` with ``t`` of shape ``[B, T]`` (per-sample
  step size and accept/reject);
- ``solvers`` loop: the same solve sample by sample on its own 1-D row;
- torchode 1.0.1: ``t_eval`` of shape ``[B, T]`` (per-sample steps), ``IntegralController``;
- torchdiffeq 0.2.5 on the union grid: every sample on all ``B*T`` times from the earliest
  start. It solves a different problem (every series starts at the earliest time), so only
  its time and evaluation count are reported, not an error (forward only: its adjoint
  runs backwards over all ``B*T`` intervals one by one and takes minutes).

Forward (no_grad) and forward+backward of ``(ys**2).mean()``: ``solvers`` with the
continuous adjoint (``odeint_adjoint``) and with direct backprop, torchode with its
``AutoDiffAdjoint`` (backprop through the solver), the loop with the adjoint. Error: max
abs difference of the outputs against ``solvers`` batched in float64 at tol 1e-10 (which
equals per-sample solves to rounding, tests/test_batched_grids.py).

Run: ``python -m benchmarks.bench_batched_grids [--quick]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from tqdm import tqdm

import solvers

from ._report import pyplot, save_figure, write_table

B, T, TOL = 256, 20, 1e-5
#: the backward loop runs on this many samples; its time is scaled by B / LOOP_BWD in the table
LOOP_BWD = 32


def with_time(net, t, y):
    """``net([y, t])`` with ``t`` a scalar or one time per sample (``[B]``)."""
    t = t.to(y.dtype)
    tt = t.reshape(-1, 1).expand(y.shape[0], 1) if t.numel() > 1 else t.reshape(1, 1).expand(y.shape[0], 1)
    return net(torch.cat([y, tt], dim=1))


class TimeMLP(torch.nn.Module):
    """``f(t, y) = net([y, t])``; ``t`` a scalar or one time per sample (``[B]``)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
        self.n = 0

    def forward(self, t, y):
        self.n += 1
        return with_time(self.net, t, y)


class PlainTimeMLP(torch.nn.Module):
    """The same net without the Python counter (a changing int on the module would make
    ``compile_step`` recompile at every call); its calls are read from the solution's stats."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return with_time(self.net, t, y)


def make_problem(b=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    field = TimeMLP()
    start = torch.rand(b, 1, generator=g)
    t = start + torch.sort(torch.rand(b, T, generator=g) * 5.0, dim=1).values
    t[:, 0] = start[:, 0]
    y0 = torch.randn(b, 2, generator=g)
    return field, y0, t


def reference(field, y0, t):
    f64 = copy.deepcopy(field).double()
    with torch.no_grad():
        return solvers.odeint(f64, y0.double(), t.double(), method="dopri5", rtol=1e-10, atol=1e-10)


def runners(field, y0, t, backward: bool, compiled: bool = True):
    import torchdiffeq
    import torchode as to

    params = tuple(field.parameters())
    out = {}

    def loss(ys):
        return (ys**2).mean()

    def ours():
        return solvers.odeint(field, y0, t, method="dopri5", rtol=TOL, atol=TOL)

    plain = PlainTimeMLP(field.net)

    def ours_compiled():  # option compile_step (inductor); its calls added to the counter
        sol = solvers.solve(plain, y0, t, method="dopri5", rtol=TOL, atol=TOL, options=dict(compile_step=True))
        field.n += sol.stats.n_f_evals
        return sol.ys

    def ours_adj():
        return solvers.odeint_adjoint(field, y0, t, method="dopri5", rtol=TOL, atol=TOL, adjoint_params=params)

    def loop(adj=False, n=None):
        rows = []
        for b in range(y0.shape[0] if n is None else n):
            fn = solvers.odeint_adjoint if adj else solvers.odeint
            kw = dict(adjoint_params=params) if adj else {}
            rows.append(fn(field, y0[b : b + 1], t[b], method="dopri5", rtol=TOL, atol=TOL, **kw)[:, 0])
        return torch.stack(rows, dim=1)

    term = to.ODETerm(field)
    step = to.Dopri5(term=term)
    ctrl = to.IntegralController(atol=TOL, rtol=TOL, term=term)
    tode_solver = to.AutoDiffAdjoint(step, ctrl)

    def tode():
        return tode_solver.solve(to.InitialValueProblem(y0=y0, t_eval=t)).ys.transpose(0, 1)  # (T, B, 2)

    union, inv = torch.unique(t.reshape(-1), sorted=True, return_inverse=True)

    def tdq():
        ys = torchdiffeq.odeint(field, y0, union, method="dopri5", rtol=TOL, atol=TOL)  # (B*T, B, 2)
        return ys[inv.reshape(t.shape), torch.arange(t.shape[0])[:, None]].transpose(0, 1)

    if not backward:
        out["solvers batched"] = ours
        if compiled:
            out["solvers batched compiled"] = ours_compiled
        out["solvers loop"] = loop
        out["torchode"] = tode
        out["torchdiffeq union"] = tdq
        return out

    def with_grad(fn):
        def run():
            field.zero_grad()
            ys = fn()
            loss(ys).backward()
            return ys.detach()

        return run

    out["solvers batched adjoint"] = with_grad(ours_adj)
    out["solvers batched direct"] = with_grad(ours)
    if compiled:
        out["solvers batched direct compiled"] = with_grad(ours_compiled)
    out[f"solvers loop adjoint (first {LOOP_BWD} samples)"] = with_grad(lambda: loop(adj=True, n=LOOP_BWD))
    out["torchode"] = with_grad(tode)
    # torchdiffeq's adjoint on the union grid is left out: it integrates backwards over all
    # B*T = 5120 output intervals one by one (it did not finish in 10 minutes here).
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled-step rows (option compile_step)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    repeats = 3 if args.quick else 7
    field, y0, t = make_problem()
    for p in field.parameters():
        p.requires_grad_(True)
    ref = reference(field, y0, t)
    rows = []
    for backward in (False, True):
        fns = runners(field, y0, t, backward, compiled=not args.no_compile)
        nfe, err = {}, {}
        for name, fn in fns.items():
            field.n = 0
            with torch.set_grad_enabled(backward):
                ys = fn()
            nfe[name] = field.n
            err[name] = float("nan") if "union" in name else float((ys.double() - ref[:, : ys.shape[1]]).abs().max())
        times = {k: [] for k in fns}
        for _ in tqdm(range(repeats), desc="fwd+bwd" if backward else "forward", leave=False):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                with torch.set_grad_enabled(backward):
                    fn()
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * (B / LOOP_BWD if "first" in k else 1.0) for k, v in times.items()}
        base = "solvers batched adjoint" if backward else "solvers batched"
        for name in fns:
            rows.append(("fwd+bwd" if backward else "forward", name, med[name] * 1e3, nfe[name], err[name], med[base] / med[name]))
            print(f"{rows[-1][0]:8s} {name:32s} {med[name] * 1e3:9.1f} ms  nfe {nfe[name]:6d}  err {err[name]:.2e}  batched/this {med[base] / med[name]:6.3f}")
    lines = [
        "# bench_batched_grids: per-sample time grids (t of shape [B, T])",
        "",
        f"B={B} series x T={T} irregular times (random start, sorted uniform times up to 5 later), time-conditioned MLP "
        f"[y, t] 3-64-64-2 tanh, dopri5 rtol=atol={TOL:g}, float32, 1 thread, medians of {repeats} interleaved repeats. "
        "Error: max abs vs solvers batched float64 at 1e-10. nfe: calls of the field (a batched call counts once; "
        "the loop's calls are on one sample each). torchdiffeq solves every series from the earliest start on the "
        "union grid (a different problem: time and nfe only). Backward: loss (ys**2).mean(); the backward loop ran on "
        f"the first {LOOP_BWD} samples and its time is scaled by {B // LOOP_BWD} (its nfe is not). The machine was shared "
        "with other jobs. 'compiled': option `compile_step=True` (inductor; compile before the timed repeats).",
        "",
        "| pass | runner | time (ms) | nfe | max error | batched time / this |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {p} | {n} | {ms:.1f} | {k} | {e:.2e} | {r:.3f} |" for p, n, ms, k, e, r in rows]
    path = write_table("batched_grids.md", "\n".join(lines))
    _plot(rows, "batched_grids.png")
    print("wrote", path)


def _plot(rows, name):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, which in zip(axes, ("forward", "fwd+bwd")):
        sel = [r for r in rows if r[0] == which]
        ax.barh([r[1] for r in sel], [r[2] for r in sel])
        ax.set_xscale("log")
        ax.set_xlabel("time (ms)")
        ax.set_title(which)
    fig.tight_layout()
    save_figure(fig, name)


if __name__ == "__main__":
    main()
