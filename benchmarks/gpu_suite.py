"""The GPU checks in one prepared call: solver speed against torchdiffeq and torchode on CUDA.

Device time is scarce (minutes per session), so every CUDA measurement this project wants
is one command, finishing in under 8 minutes with ``--quick``::

    python -m benchmarks.gpu_suite --quick            # on a machine with CUDA

It measures, at batch 4096 x dim 64 (``--batch``, ``--dim``), float32, on ``--device``
(default ``cuda``), all in one process with the timings interleaved:

1. **adaptive**: dopri5 forward at rtol = atol = 1e-6 on an MLP field
   ``dim -> 2 dim -> dim`` (tanh): ``solvers.odeint`` vs torchdiffeq and torchode.
2. **adjoint**: forward+backward of ``(y(1)**2).mean()`` with the continuous adjoint:
   ``solvers.odeint_adjoint`` vs ``torchdiffeq.odeint_adjoint``; direct backprop too.
3. **batched grids**: per-sample times ``t [B, 20]`` (random irregular rows):
   ``solvers.odeint`` with ``t [B, T]`` vs torchode's per-sample ``t_eval``.
4. **block**: ``odenet.ODEBlock`` (euler, 10 steps) vs the hand-written loop
   ``x = x + h f(x)``, forward and forward+backward.
5. **host synchronisations per adaptive step** (CUDA only): the solve runs under
   ``torch.cuda.set_sync_debug_mode("warn")`` and the warnings are counted.
6. ``odenet compare --device DEVICE`` on the digits (``--quick``: 2 epochs), its table.

Writes ``benchmarks/results/gpu_suite.md`` and ``gpu_suite.json`` (``--out`` for another
folder). Without CUDA, ``--device cpu`` runs the same script (that is how the test suite
checks it, at a tiny size); the default ``cuda`` refuses to run without CUDA.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

import solvers

from ._report import RESULTS, parse_device

T_GRID = 20


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fns: dict, repeats: int, device, desc: str) -> dict:
    """Median seconds per call of each function, timed in alternation after one warm-up."""
    for fn in fns.values():
        fn()
    _sync(device)
    samples = {k: [] for k in fns}
    for _ in tqdm(range(repeats), desc=desc, leave=False, disable=None):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


class MLPField(torch.nn.Module):
    """``f(t, y) = W2 tanh(W1 y + b1) + b2``, counting its calls."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.Tanh(), torch.nn.Linear(2 * dim, dim))
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.net(y)


def _field(dim, device, seed=0):
    torch.manual_seed(seed)
    f = MLPField(dim).to(device)
    with torch.no_grad():  # a smooth, moderately nonlinear field: tens of steps at 1e-6
        for p in f.parameters():
            p.mul_(0.5)
    return f


def _peers():
    out = {}
    try:
        import torchdiffeq

        out["torchdiffeq"] = torchdiffeq
    except ImportError:
        pass
    try:
        import torchode

        out["torchode"] = torchode
    except ImportError:
        pass
    return out


def _nfe(fn, field) -> int:
    field.nfe = 0
    fn()
    return field.nfe


def case_adaptive(b, dim, device, repeats, peers) -> list:
    f = _field(dim, device)
    y0 = torch.randn(b, dim, device=device)
    t = torch.tensor([0.0, 1.0], device=device)
    fns = {"solvers": lambda: solvers.odeint(f, y0, t, method="dopri5", rtol=1e-6, atol=1e-6)}
    if "torchdiffeq" in peers:
        tdq = peers["torchdiffeq"]
        fns["torchdiffeq"] = lambda: tdq.odeint(f, y0, t, method="dopri5", rtol=1e-6, atol=1e-6)
    if "torchode" in peers:
        to = peers["torchode"]
        term = to.ODETerm(f)
        solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=1e-6, rtol=1e-6, term=term))
        t_eval = t.expand(b, 2).contiguous()
        fns["torchode"] = lambda: solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval)).ys
    with torch.no_grad():
        med = _timed(fns, repeats, device, "adaptive")
        return [dict(case="adaptive dopri5 forward, tol 1e-6", impl=k, seconds=v, nfe=_nfe(fns[k], f),
                     ratio=v / med["solvers"]) for k, v in med.items()]


def case_adjoint(b, dim, device, repeats, peers) -> list:
    f = _field(dim, device, seed=1)
    y0 = torch.randn(b, dim, device=device)
    t = torch.tensor([0.0, 1.0], device=device)

    def run(odeint_fn, **kw):
        def go():
            f.zero_grad(set_to_none=True)
            (odeint_fn(f, y0, t, rtol=1e-6, atol=1e-6, method="dopri5", **kw)[-1] ** 2).mean().backward()
        return go

    fns = {"solvers": run(solvers.odeint_adjoint, adjoint_params=tuple(f.parameters())),
           "solvers direct": run(solvers.odeint)}
    if "torchdiffeq" in peers:
        fns["torchdiffeq"] = run(peers["torchdiffeq"].odeint_adjoint, adjoint_params=tuple(f.parameters()))
    med = _timed(fns, repeats, device, "adjoint")
    return [dict(case="continuous adjoint, forward+backward", impl=k, seconds=v, nfe=_nfe(fns[k], f),
                 ratio=v / med["solvers"]) for k, v in med.items()]


def case_batched_grids(b, dim, device, repeats, peers) -> list:
    f = _field(dim, device, seed=2)
    g = torch.Generator().manual_seed(0)
    start = torch.rand(b, 1, generator=g)
    t = (start + torch.sort(5 * torch.rand(b, T_GRID - 1, generator=g), dim=1).values)
    t = torch.cat([start, t], dim=1).to(device)
    y0 = torch.randn(b, dim, device=device)
    fns = {"solvers": lambda: solvers.odeint(f, y0, t, method="dopri5", rtol=1e-5, atol=1e-5)}
    if "torchode" in peers:
        to = peers["torchode"]
        term = to.ODETerm(f)
        solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=1e-5, rtol=1e-5, term=term))
        fns["torchode"] = lambda: solver.solve(to.InitialValueProblem(y0=y0, t_eval=t)).ys
    with torch.no_grad():
        med = _timed(fns, repeats, device, "batched grids")
        return [dict(case=f"per-sample grids t [B, {T_GRID}], dopri5 tol 1e-5, forward", impl=k, seconds=v,
                     nfe=_nfe(fns[k], f), ratio=v / med["solvers"]) for k, v in med.items()]


def case_block(b, dim, device, repeats) -> list:
    import odenet

    f = _field(dim, device, seed=3)
    steps = 10
    block = odenet.ODEBlock(f, method="euler", steps=steps, t1=1.0).to(device)
    x = torch.randn(b, dim, device=device)
    xg = x.clone().requires_grad_(True)
    h = 1.0 / steps

    def loop(z):
        for _ in range(steps):
            z = z + h * f.net(z)
        return z

    rows = []
    for mode in ("forward", "forward+backward"):
        if mode == "forward":
            fns = {"ODEBlock": lambda: block(x), "hand-written": lambda: loop(x)}
            with torch.no_grad():
                med = _timed(fns, repeats, device, "block forward")
        else:
            fns = {"ODEBlock": lambda: block(xg).sum().backward(), "hand-written": lambda: loop(xg).sum().backward()}
            med = _timed(fns, repeats, device, "block fwd+bwd")
        rows += [dict(case=f"euler {steps} steps, {mode}", impl=k, seconds=v, nfe=steps,
                      ratio=v / med["hand-written"]) for k, v in med.items()]
    return rows


def count_syncs(b, dim, device) -> dict:
    """Host synchronisations per accepted step of an adaptive solve (CUDA only)."""
    if device.type != "cuda":
        return {"note": "host synchronisations are counted on CUDA only"}
    f = _field(dim, device)
    y0 = torch.randn(b, dim, device=device)
    t = torch.tensor([0.0, 1.0], device=device)
    with torch.no_grad():
        solvers.odeint(f, y0, t, method="dopri5", rtol=1e-6, atol=1e-6)  # warm-up
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                sol = solvers.solve(f, y0, t, method="dopri5", rtol=1e-6, atol=1e-6)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    n = sum("synchroniz" in str(w.message).lower() for w in caught)
    steps = max(1, sol.stats.n_steps)
    return {"syncs": n, "steps": sol.stats.n_steps, "syncs_per_step": n / steps}


def run_compare(device, quick: bool, out: Path) -> dict:
    import odenet

    t0 = time.perf_counter()
    kw = dict(epochs=2, limit_train=512) if quick else {}
    res = odenet.compare(device=str(device), out=str(out / "compare"), quiet=True, **kw)
    return {"seconds": time.perf_counter() - t0, "table": odenet.format_table(res)}


def _markdown(meta, rows, syncs, cmp) -> str:
    md = ["# gpu_suite: solvers on the GPU against torchdiffeq and torchode", "",
          f"Device: {meta['device_name']}; torch {meta['torch']}; batch {meta['batch']} x dim {meta['dim']}, "
          f"float32. Command: `{meta['command']}`. Ratio = time / this project's time in the same case "
          "(> 1: slower than this project), except the block rows (time / the hand-written loop).", "",
          "| case | implementation | ms | NFE | ratio |", "|---|---|---|---|---|"]
    md += [f"| {r['case']} | {r['impl']} | {1e3 * r['seconds']:.2f} | {r['nfe']} | {r['ratio']:.2f} |" for r in rows]
    md += ["", "## Host synchronisations per adaptive step", "", f"`{json.dumps(syncs)}`"]
    if cmp is not None:
        md += ["", f"## odenet compare ({cmp['seconds']:.0f} s)", "", "```", str(cmp["table"]), "```"]
    return "\n".join(md) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and a 2-epoch compare (under 8 minutes)")
    p.add_argument("--device", default="cuda", help="torch device (default cuda; cpu for a smoke run)")
    p.add_argument("--batch", type=int, default=4096, help="batch size (default 4096)")
    p.add_argument("--dim", type=int, default=64, help="state dimension (default 64)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 5, --quick 3)")
    p.add_argument("--no-compare", action="store_true", help="skip the `odenet compare` run")
    p.add_argument("--out", default=None, help=f"folder for gpu_suite.md / gpu_suite.json (default {RESULTS})")
    args = p.parse_args(argv)
    device = parse_device(p, args.device)
    for name in ("batch", "dim"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    repeats = args.repeats or (3 if args.quick else 5)
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    peers = _peers()
    b, d = args.batch, args.dim
    rows = []
    for case in tqdm(("adaptive", "adjoint", "batched grids", "block"), desc="gpu_suite", disable=None):
        if case == "adaptive":
            rows += case_adaptive(b, d, device, repeats, peers)
        elif case == "adjoint":
            rows += case_adjoint(b, d, device, repeats, peers)
        elif case == "batched grids":
            rows += case_batched_grids(b, d, device, repeats, peers)
        else:
            rows += case_block(b, d, device, repeats)
    syncs = count_syncs(b, d, device)
    cmp = None if args.no_compare else run_compare(device, args.quick, out)
    meta = dict(device=str(device), torch=torch.__version__, batch=b, dim=d, platform=platform.platform(),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                command="python -m benchmarks.gpu_suite" + (" " + " ".join(argv) if argv else ""),
                peers=sorted(peers))
    result = dict(meta=meta, rows=rows, syncs=syncs, compare=cmp)
    from odenet._io import atomic_write_text

    atomic_write_text(out / "gpu_suite.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "gpu_suite.md", _markdown(meta, rows, syncs, cmp))
    for r in rows:
        print(f"{r['case']:48s} {r['impl']:15s} {1e3 * r['seconds']:9.2f} ms  NFE {r['nfe']:5d}  ratio {r['ratio']:.2f}")
    print(f"syncs: {syncs}")
    print(f"wrote {out / 'gpu_suite.md'} and {out / 'gpu_suite.json'}")
    return result


if __name__ == "__main__":
    main()
