"""Where an adaptive solve's time goes: the field against the solver's own work, per stage.

Two problems, both from the benchmarks they profile:

- shared grid (``bench_adaptive``): MLP 2-64-64-2 tanh (x4), batch 256, float32, dopri5 at
  rtol = atol = 1e-6, t in [0, 1] with 5 outputs, forward (no_grad);
- per-sample grid (``bench_batched_grids``): ``t`` [256, 20], time-conditioned MLP 3-64-64-2,
  dopri5 at 1e-5, forward (no_grad).

Part 1: CPU time of this thread per solve (20th percentile of interleaved repeats), split
into the time spent inside the vector field and the rest, for ``solvers``, torchdiffeq (shared
grid only) and torchode, next to the floor: the same number of field calls alone.
Part 2: the kernels (aten ops, views left out; ``torch.tensor`` counts as one) the solver
launches outside the field in one solve, grouped by what they are for (found from the source
line that launched them, with a ``TorchDispatchMode``). On these small states every kernel
costs about the same few microseconds of dispatch, so the count is the cost; "the rest" of
part 1 less the floor's rest is what they and the Python between them cost.

Run: ``python -m benchmarks.profile_adaptive [--repeats N] [--only shared|batched]``
"""

from __future__ import annotations

import argparse
import collections
import linecache
import os
import time
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import solvers

_SOLVERS_DIR = os.path.dirname(os.path.abspath(solvers.__file__))

#: (file, function) -> group; the loops' own lines are grouped by what the line does (_LINE)
_FUNC = {
    ("_base.py", "lincomb"): "stage combinations",
    ("_explicit.py", "step"): "stage combinations",
    ("_explicit.py", "interpolate"): "dense output (outputs inside a step)",
    ("_explicit.py", "interpolate_at"): "dense output (outputs inside a step)",
    ("_base.py", "interpolate_at"): "dense output (outputs inside a step)",
    ("_explicit.py", "_cached_dense"): "dense output (outputs inside a step)",
    ("_base.py", "error_ratio"): "error norm",
    ("_integrate.py", "rms_norm"): "error norm",
    ("_grids.py", "batch_rms_norm"): "error norm",
    ("_integrate.py", "_abs32"): "error norm",
    ("_controller.py", "initial_step"): "initial step",
    ("_grids_adaptive.py", "_initial_step"): "initial step",
    ("_controller.py", "propose_batch"): "step-size controller",
    ("_grids_adaptive.py", "interpolate_batched"): "dense output (outputs inside a step)",
    ("_grids_adaptive.py", "_dense_matrix"): "dense output (outputs inside a step)",
    ("_integrate.py", "_check_finite"): "per solve: checks, output stack",
    ("_integrate.py", "_all_finite"): "per solve: checks, output stack",
    ("_integrate.py", "_integrate_batched"): "per solve: checks, output stack",
    ("_api.py", "finish"): "per solve: checks, output stack",
    ("_problem.py", "adaptive_tols"): "per solve: checks, output stack",
    ("_grids.py", "check_t_batched"): "per solve: checks, output stack",
    ("_grids.py", "add_sample_stats"): "per-sample counters",
}
#: keywords of a loop line -> group (first match wins)
_LINE = (
    ("ts = ", "stage times"),
    ("times", "stage times"),
    ("scale", "error norm"),
    ("ratio", "error norm"),
    ("abs_y", "error norm"),
    ("stats.", "per-sample counters"),
    ("n_steps", "per-sample counters"),
    ("entries", "dense output (outputs inside a step)"),
    ("theta", "dense output (outputs inside a step)"),
    ("outs", "dense output (outputs inside a step)"),
    ("yq", "dense output (outputs inside a step)"),
    ("tq", "dense output (outputs inside a step)"),
    ("jj", "dense output (outputs inside a step)"),
    ("kk", "dense output (outputs inside a step)"),
    ("valid", "dense output (outputs inside a step)"),
    ("inner", "dense output (outputs inside a step)"),
    ("hit", "dense output (outputs inside a step)"),
    ("out", "per solve: checks, output stack"),
    ("rows", "per solve: checks, output stack"),
    ("bidx", "per solve: checks, output stack"),
)


def _group(stack) -> str:
    """The group of the kernel launched from this Python stack ("field" if from the field)."""
    if any(fr.name in ("initial_step", "_initial_step") for fr in stack):
        return "initial step"
    for fr in reversed(stack):
        fn = os.path.abspath(fr.filename)
        if not fn.startswith(_SOLVERS_DIR):
            if "benchmarks" in fn:
                return "field"
            continue
        base = os.path.basename(fn)
        if base == "_problem.py" and fr.name == "__call__":
            return "field"
        g = _FUNC.get((base, fr.name))
        if g is not None:
            return g
        line = linecache.getline(fr.filename, fr.lineno)
        for key, g in _LINE:
            if key in line:
                return g
        return "loop bookkeeping (accept/reject, masks, step size)"
    return "other"


class _Count(TorchDispatchMode):
    """Counts the kernels launched under it, by group."""

    def __init__(self):
        super().__init__()
        self.n = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket not in _VIEWS:
            g = "host reads (the sync per step)" if func.overloadpacket is torch.ops.aten._local_scalar_dense else _group(traceback.extract_stack()[:-1])
            self.n[g] += 1
        return func(*args, **(kwargs or {}))


#: view and metadata ops: no kernel, not counted
_VIEWS = {getattr(torch.ops.aten, n) for n in ("view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "expand", "select", "slice", "t", "transpose", "permute", "detach", "alias", "as_strided", "unbind")}


def _timed(field):
    acc = [0.0]

    class Timed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = field

        def forward(self, t, y):
            t0 = time.thread_time()
            out = self.f(t, y)
            acc[0] += time.thread_time() - t0
            return out

    return Timed(), acc


def _p20(xs):
    xs = sorted(xs)
    return xs[len(xs) // 5]


def _problems(only):
    from benchmarks import bench_adaptive as ba
    from benchmarks import bench_batched_grids as bb

    out = []
    if only in (None, "shared"):
        net, y0, t = ba.make_problem()
        out.append(("shared grid, dopri5 1e-6", ba.Counted(net), y0, t, 1e-6))
    if only in (None, "batched"):
        field, y0, t = bb.make_problem()
        for p in field.parameters():
            p.requires_grad_(False)
        out.append(("per-sample grid [256, 20], dopri5 1e-5", field, y0, t, 1e-5))
    return out


def _runners(field, y0, t, tol):
    import torchode as to

    fns = {"solvers": lambda: solvers.odeint(field, y0, t, method="dopri5", rtol=tol, atol=tol)}
    if t.ndim == 1:
        import torchdiffeq

        fns["torchdiffeq"] = lambda: torchdiffeq.odeint(field, y0, t, method="dopri5", rtol=tol, atol=tol)
    term = to.ODETerm(lambda tt, y: field(tt, y))
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=tol, rtol=tol, term=term))
    t_eval = t if t.ndim == 2 else t.expand(y0.shape[0], -1)
    fns["torchode"] = lambda: solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval)).ys
    return fns


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--only", choices=("shared", "batched"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for title, field0, y0, t, tol in _problems(args.only):
        field, acc = _timed(field0)
        fns = _runners(field, y0, t, tol)
        with torch.no_grad():
            n_calls = {}
            for name, fn in fns.items():
                field0.n = 0
                fn()
                n_calls[name] = field0.n
            t_f = t[..., 0]
            floor_fn = lambda: [field(t_f, y0) for _ in range(n_calls["solvers"])]  # noqa: E731
            fns_all = dict(fns, **{"floor (the field calls alone)": floor_fn})
            tot = {k: [] for k in fns_all}
            inner = {k: [] for k in fns_all}
            for _ in range(args.repeats):
                for name, fn in fns_all.items():
                    acc[0] = 0.0
                    t0 = time.thread_time()
                    fn()
                    tot[name].append(time.thread_time() - t0)
                    inner[name].append(acc[0])
        print(f"\n## {title}  (CPU time per solve, 20th percentile of {args.repeats})\n")
        print("| runner | field calls | total (ms) | in the field (ms) | the rest (ms) | total / torchode |")
        print("|---|---|---|---|---|---|")
        ref = _p20(tot["torchode"])
        for name in fns_all:
            a, b = _p20(tot[name]), _p20(inner[name])
            n = n_calls.get(name, n_calls["solvers"])
            print(f"| {name} | {n} | {a * 1e3:.2f} | {b * 1e3:.2f} | {(a - b) * 1e3:.2f} | {a / ref:.2f} |")
        if "torchdiffeq" in tot:
            print(f"\nsolvers / torchdiffeq: {_p20(tot['solvers']) / _p20(tot['torchdiffeq']):.2f}")
        # kernels by group
        with torch.no_grad():
            counter = _Count()
            with counter:
                fns["solvers"]()
        n_ours = sum(v for g, v in counter.n.items() if g != "field")
        print(f"\n| where (outside the field) | kernels per solve | share of the solver's {n_ours} |")
        print("|---|---|---|")
        for g, n in counter.n.most_common():
            if g != "field":
                print(f"| {g} | {n} | {n / n_ours:.0%} |")
        print(f"| (the field: {counter.n['field']} kernels) | | |")


if __name__ == "__main__":
    main()
