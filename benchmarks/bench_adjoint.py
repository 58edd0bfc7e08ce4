"""Continuous adjoint: forward+backward time and gradient error against torchdiffeq.

Problem: MLP vector field 2->64->64->2 (tanh), batch 256, float32, dopri5 from t=0 to
t=10, loss = mean |y(10)|^2. For tolerances 1e-3 and 1e-6 (forward and backward alike),
``solvers.odeint_adjoint`` and ``torchdiffeq.odeint_adjoint`` are timed in ONE process,
interleaved, and the median of the repeats is reported, with the relative gradient
error (y0 and parameters) against direct backprop through ``solvers.odeint`` at
rtol=atol=1e-10 in float64, and the forward/backward function evaluations. Each is run
with the default adjoint norm and with ``norm="seminorm"``.

Run: ``python -m benchmarks.bench_adjoint [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchdiffeq

import solvers

from ._report import RESULTS, pyplot, save_figure, write_table

T_END = 10.0


class Field(torch.nn.Module):
    """Counts its evaluations (forward solve and backward solve alike)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.net(y)


class Plain(torch.nn.Module):
    """The same net with no Python counter (a changing int on the module would make
    ``compile_step`` recompile at every call); calls are read from the solution's stats."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return self.net(y)


def _grads(f, y0, ys):
    loss = ys[-1].pow(2).sum(dim=-1).mean()
    return torch.autograd.grad(loss, [y0, *f.parameters()])


def run(lib: str, tol: float, seminorm: bool, f: Field, y0_data: torch.Tensor, plain: "Plain | None" = None):
    """One forward+backward; returns (seconds, grads, forward calls, backward calls)."""
    y0 = y0_data.clone().requires_grad_()
    t = torch.tensor([0.0, T_END])
    aopts = dict(norm="seminorm") if seminorm else None
    if lib == "solvers compiled":  # the forward solve's steps compiled (option compile_step); the backward eager
        t0 = time.perf_counter()
        sol = solvers.solve(plain, y0, t, rtol=tol, atol=tol, method="dopri5", options=dict(compile_step=True),
                            gradient="adjoint", gradient_options=dict(options=aopts) if aopts else {})
        g = _grads(plain, y0, sol.ys)
        dt = time.perf_counter() - t0
        return dt, g, sol.stats.n_f_evals, sol.stats.n_f_evals_backward
    fn = solvers.odeint_adjoint if lib == "solvers" else torchdiffeq.odeint_adjoint
    f.calls = 0
    t0 = time.perf_counter()
    ys = fn(f, y0, t, rtol=tol, atol=tol, method="dopri5", adjoint_options=aopts)
    n_fwd = f.calls
    g = _grads(f, y0, ys)
    dt = time.perf_counter() - t0
    return dt, g, n_fwd, f.calls - n_fwd


def reference(f: Field, y0_data: torch.Tensor):
    f64 = Field().double()
    f64.load_state_dict(f.state_dict())
    y0 = y0_data.double().requires_grad_()
    ys = solvers.odeint(f64, y0, torch.tensor([0.0, T_END], dtype=torch.float64), rtol=1e-10, atol=1e-10, method="dopri5")
    return _grads(f64, y0, ys)


def rel_err(g, ref) -> float:
    num = sum(float((a.double() - b).pow(2).sum()) for a, b in zip(g, ref))
    den = sum(float(b.pow(2).sum()) for b in ref)
    return (num / den) ** 0.5


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-compile", action="store_true", help="skip the rows with the forward's steps compiled (compile_step)")
    args = p.parse_args(argv)
    reps = args.repeats or (3 if args.quick else 11)
    torch.set_num_threads(1)  # like the other benchmarks: two intra-op threads on a shared 2-core box oversubscribe it
    from tqdm import tqdm

    f = Field()
    plain = Plain(f.net)  # the compiled rows' field: the same weights, no counter
    torch.manual_seed(1)
    y0 = torch.randn(256, 2)
    ref = reference(f, y0)
    configs = [(tol, semi) for tol in (1e-3, 1e-6) for semi in (False, True)]
    rows = []
    for tol, semi in configs:
        libs = ("solvers", "torchdiffeq") + (() if args.no_compile else ("solvers compiled",))
        times = {lib: [] for lib in libs}
        info = {}
        for lib in libs:  # warm-up (and the compile)
            run(lib, tol, semi, f, y0, plain)
        for _ in tqdm(range(reps), desc=f"tol={tol:g} seminorm={semi}", leave=False):
            for lib in libs:  # interleaved
                dt, g, nf, nb = run(lib, tol, semi, f, y0, plain)
                times[lib].append(dt)
                info[lib] = (rel_err(g, ref), nf, nb)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((tol, semi, med, info))
    lines = [
        "# Continuous adjoint vs torchdiffeq.odeint_adjoint",
        "",
        "dopri5 forward+backward, MLP 2->64->64->2 tanh, batch 256, float32, t in [0, 10], CPU, 1 thread;",
        f"median of {reps} interleaved repeats in one process. Gradient error: relative 2-norm over (y0, params)",
        "against direct backprop at rtol=atol=1e-10 in float64. nfe: vector-field calls (backward: one per augmented evaluation,",
        "each of which also does one vector-Jacobian product, plus one per output time for time gradients in solvers when t requires grad).",
        "",
        "\"compiled\": the same solve with the forward's steps compiled (`solve(..., options=dict(compile_step=True), "
        "gradient='adjoint')`, inductor; compile time before the repeats, not counted); its backward pass runs eager.",
        "",
        "| tol | adjoint norm | solvers ms | torchdiffeq ms | ratio | compiled ms | compiled ratio | compiled grad err | solvers grad err | torchdiffeq grad err | solvers nfe fwd/bwd | torchdiffeq nfe fwd/bwd |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tol, semi, med, info in rows:
        s, d = info["solvers"], info["torchdiffeq"]
        c = med.get("solvers compiled")
        cms, cr, ce = (f"{c * 1e3:.1f}", f"{c / med['torchdiffeq']:.2f}", f"{info['solvers compiled'][0]:.2e}") if c is not None else ("—",) * 3
        lines.append(
            f"| {tol:g} | {'seminorm' if semi else 'mixed (default)'} | {med['solvers'] * 1e3:.1f} | {med['torchdiffeq'] * 1e3:.1f} | "
            f"{med['solvers'] / med['torchdiffeq']:.2f} | {cms} | {cr} | {ce} | {s[0]:.2e} | {d[0]:.2e} | {s[1]}/{s[2]} | {d[1]}/{d[2]} |"
        )
    lines.append("")
    for tol in (1e-3, 1e-6):
        full = next(r for r in rows if r[0] == tol and not r[1])
        semi = next(r for r in rows if r[0] == tol and r[1])
        for lib in ("solvers", "torchdiffeq"):
            b0, b1 = full[3][lib][2], semi[3][lib][2]
            lines.append(f"- tol {tol:g}, {lib}: seminorm backward nfe {b1} vs {b0} ({100 * (1 - b1 / b0):.0f}% saved)")
    text = "\n".join(lines) + "\n"
    print(text)
    write_table("adjoint.md", text)

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"{tol:g}\n{'semi' if semi else 'mixed'}" for tol, semi, _, _ in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r[2]["solvers"] * 1e3 for r in rows], width=0.4, label="solvers")
    ax.bar([i + 0.2 for i in x], [r[2]["torchdiffeq"] * 1e3 for r in rows], width=0.4, label="torchdiffeq")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels)
    ax.set_ylabel("forward+backward (ms, median)")
    ax.set_title("dopri5 adjoint, MLP batch 256, CPU")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, "adjoint.png")
    print(f"wrote {RESULTS / 'adjoint.md'} and {RESULTS / 'adjoint.png'}")


if __name__ == "__main__":
    main()
