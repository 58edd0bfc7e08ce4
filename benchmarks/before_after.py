"""This tree's `solvers` against an older one, in one process, on the adaptive benchmarks.

The older tree is loaded as a second package (``solvers_before``) from a directory holding its
``solvers/`` (``git archive <commit> | tar -x -C DIR``), so both run interleaved under the same
machine load. Cases: the shared-grid dopri5 forward of ``bench_adaptive`` (tol 1e-6), the
per-sample-grid forward of ``bench_batched_grids``, the continuous adjoint forward+backward of
``bench_adjoint`` (t in [0, 10], tol 1e-6, mixed norm) and the same with 21 output times, and
the per-sample-grid adjoint; each next to torchdiffeq or torchode. Times: CPU time of this
thread, 20th percentile of interleaved repeats. Calls: vector-field calls (forward + backward).
Gradient errors: relative 2-norm against direct backpropagation through a float64 solve at
1e-10.

Run: ``python -m benchmarks.before_after --before DIR [--repeats N]``
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import time

import torch

import solvers


def _load_before(root: str):
    pkg = os.path.join(root, "solvers")
    spec = importlib.util.spec_from_file_location("solvers_before", os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["solvers_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def _p20(xs):
    xs = sorted(xs)
    return xs[len(xs) // 5]


def _rel(g, ref) -> float:
    num = sum(float((a.double() - b).pow(2).sum()) for a, b in zip(g, ref))
    return (num / sum(float(b.pow(2).sum()) for b in ref)) ** 0.5


def _cases(sb):
    import torchdiffeq
    import torchode as to

    from benchmarks import bench_adaptive as ba
    from benchmarks import bench_adjoint as bj
    from benchmarks import bench_batched_grids as bb

    net, y0, t = ba.make_problem()
    fa = ba.Counted(net)

    def fwd(lib):
        return lambda: (lib.odeint(fa, y0, t, method="dopri5", rtol=1e-6, atol=1e-6), None)

    yield "shared grid, dopri5 1e-6, forward", fa, {"before": fwd(sb), "after": fwd(solvers), "torchdiffeq": fwd(torchdiffeq)}, None, True

    fb, yb, tb = bb.make_problem()
    fb_nograd = copy.deepcopy(fb)
    for p in fb_nograd.parameters():
        p.requires_grad_(False)
    term = to.ODETerm(fb_nograd)
    tode = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=1e-5, rtol=1e-5, term=term))

    def fwd_b(lib):
        return lambda: (lib.odeint(fb_nograd, yb, tb, method="dopri5", rtol=1e-5, atol=1e-5), None)

    yield "per-sample grid [256, 20], dopri5 1e-5, forward", fb_nograd, {
        "before": fwd_b(sb), "after": fwd_b(solvers),
        "torchode": lambda: (tode.solve(to.InitialValueProblem(y0=yb, t_eval=tb)).ys, None)}, None, True

    fj = bj.Field()
    torch.manual_seed(1)
    yj = torch.randn(256, 2)
    f64 = bj.Field().double()
    f64.load_state_dict(fj.state_dict())
    for n_out in (2, 21):
        tj = torch.linspace(0.0, bj.T_END, n_out)
        ys = solvers.odeint(f64, yj.double(), tj.double(), rtol=1e-10, atol=1e-10)
        ref = torch.autograd.grad((ys**2).mean(), tuple(f64.parameters()))

        def adj(fn, tj=tj):
            def run():
                ys = fn(fj, yj, tj, rtol=1e-6, atol=1e-6, method="dopri5")
                return ys, torch.autograd.grad((ys**2).mean(), tuple(fj.parameters()))

            return run

        name = f"continuous adjoint, t in [0, 10] with {n_out} outputs, dopri5 1e-6, forward+backward"
        yield name, fj, {"before": adj(sb.odeint_adjoint), "after": adj(solvers.odeint_adjoint), "torchdiffeq": adj(torchdiffeq.odeint_adjoint)}, ref, False

    fb64 = copy.deepcopy(fb).double()
    ys = solvers.odeint(fb64, yb.double(), tb.double(), method="dopri5", rtol=1e-10, atol=1e-10)
    ref_b = torch.autograd.grad((ys**2).mean(), tuple(fb64.parameters()))
    params = tuple(fb.parameters())

    def adj_b(lib):
        def run():
            ys = lib.odeint_adjoint(fb, yb, tb, method="dopri5", rtol=1e-5, atol=1e-5, adjoint_params=params)
            return ys, torch.autograd.grad((ys**2).mean(), params)

        return run

    yield "per-sample grid [256, 20], continuous adjoint, dopri5 1e-5, forward+backward", fb, {"before": adj_b(sb), "after": adj_b(solvers)}, ref_b, False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="a directory holding the older tree's solvers/ package")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sb = _load_before(args.before)
    print(f"CPU time of this thread, 20th percentile of {args.repeats} interleaved repeats, one process\n")
    print("| case | runner | time (ms) | field calls | gradient error | time / reference |")
    print("|---|---|---|---|---|---|")
    for name, field, fns, ref, no_grad in _cases(sb):
        calls, errs, times = {}, {}, {k: [] for k in fns}
        with torch.set_grad_enabled(not no_grad):
            for k, fn in fns.items():
                n0 = getattr(field, "n", getattr(field, "calls", 0))
                _, g = fn()
                calls[k] = getattr(field, "n", getattr(field, "calls", 0)) - n0
                errs[k] = _rel(g, ref) if g is not None else None
            for _ in range(args.repeats):
                for k, fn in fns.items():
                    t0 = time.thread_time()
                    fn()
                    times[k].append(time.thread_time() - t0)
        refname = [k for k in fns if k not in ("before", "after")]
        base = _p20(times[refname[0]]) if refname else _p20(times["before"])
        for k in fns:
            e = f"{errs[k]:.2e}" if errs[k] is not None else "—"
            print(f"| {name} | {k} | {_p20(times[k]) * 1e3:.1f} | {calls[k]} | {e} | {_p20(times[k]) / base:.2f} |")


if __name__ == "__main__":
    main()
