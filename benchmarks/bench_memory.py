"""Peak memory of forward + backward against the number of steps, per gradient mode.

Compares ``gradient="direct"`` (backprop through every step), ``"checkpoint"``
(recompute between ``sqrt(n_steps)`` checkpoints) and ``"adjoint"`` (continuous
adjoint) on fixed-step Euler solves of an MLP field (float32, batch and width large
enough that activations dominate), for 10 ... 1000 steps.

What is measured: each point runs in a fresh subprocess; after the model and inputs
exist, the process's resident-set high-water mark is reset (``/proc/self/clear_refs``)
and the peak above the resident size at that moment is read from ``VmHWM`` after
``loss.backward()``. The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
every activation-sized block is mmap'ed and returned to the OS when freed: the high-water
mark then tracks live tensor memory (small allocator noise of ~1 MB remains).

Run: ``python -m benchmarks.bench_memory [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ._report import RESULTS, pyplot, save_figure, write_table

MODES = ("direct", "checkpoint", "adjoint")


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not found in /proc/self/status")


def worker(mode: str, steps: int, batch: int, width: int, dim: int) -> dict:
    import torch

    import solvers

    from .bench_fixed import net_field

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(dim, width), torch.nn.Tanh(), torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, dim)
    )
    f = net_field(net)
    y0 = torch.randn(batch, dim, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    opts = dict(step_size=1.0 / steps)
    # one small forward+backward in the same mode: lazy initialisation (code pages, thread
    # pools, autograd/checkpoint machinery) happens here and is not counted
    warm = solvers.solve(f, y0, t, method="euler", options=dict(step_size=0.25), gradient=mode)
    warm.ys[-1].pow(2).sum().backward()
    del warm
    f.zero_grad(set_to_none=True)
    y0.grad = None
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    sol = solvers.solve(f, y0, t, method="euler", options=opts, gradient=mode)
    sol.ys[-1].pow(2).sum().backward()
    peak = _status("VmHWM") - base
    return {"mode": mode, "steps": steps, "peak_bytes": peak, "n_f_evals": sol.stats.n_f_evals, "n_f_evals_backward": sol.stats.n_f_evals_backward, "n_checkpoints": sol.stats.n_checkpoints}


def run_point(mode: str, steps: int, args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--worker", mode, str(steps), "--batch", str(args.batch), "--width", str(args.width), "--dim", str(args.dim)]
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer step counts and a smaller problem")
    p.add_argument("--worker", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--dim", type=int, default=64)
    args = p.parse_args(argv)
    args.batch = args.batch or (128 if args.quick else 256)
    args.width = args.width or (128 if args.quick else 256)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.batch, args.width, args.dim)))
        return

    from tqdm import tqdm

    steps_list = [10, 100, 300] if args.quick else [10, 30, 100, 300, 1000]
    points = [(m, s) for s in steps_list for m in MODES]
    res = {}
    for mode, steps in tqdm(points, desc="memory points"):
        res[(mode, steps)] = run_point(mode, steps, args)
    mb = {k: v["peak_bytes"] / 2**20 for k, v in res.items()}
    lo, hi = steps_list[0], steps_list[-1]
    lines = [
        "# Peak memory of forward + backward vs number of steps",
        "",
        f"Fixed-step Euler, MLP field {args.dim}->{args.width}->{args.width}->{args.dim} (tanh), batch {args.batch}, float32, CPU, 1 thread.",
        "Peak resident memory above the pre-solve baseline (VmHWM after a reset), one fresh subprocess per point,",
        "glibc `MALLOC_MMAP_THRESHOLD_=65536` so freed activations leave the process. MiB.",
        "",
        "| steps | " + " | ".join(MODES) + " | checkpoints |",
        "|---:|" + "---:|" * len(MODES) + "---:|",
    ]
    for s in steps_list:
        lines.append(f"| {s} | " + " | ".join(f"{mb[(m, s)]:.1f}" for m in MODES) + f" | {res[('checkpoint', s)]['n_checkpoints']} |")
    lines.append("")
    for m in MODES:
        lines.append(f"- {m}: {hi} steps / {lo} steps = {mb[(m, hi)] / max(mb[(m, lo)], 1e-9):.2f}x")
    lines.append(f"- direct / adjoint at {hi} steps: {mb[('direct', hi)] / max(mb[('adjoint', hi)], 1e-9):.1f}x; direct / checkpoint: {mb[('direct', hi)] / max(mb[('checkpoint', hi)], 1e-9):.1f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    write_table("memory.md", text)

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in MODES:
        ax.plot(steps_list, [mb[(m, s)] for s in steps_list], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Euler steps")
    ax.set_ylabel("peak memory above baseline (MiB)")
    ax.set_title(f"forward+backward, batch {args.batch}, width {args.width}")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, "memory.png")
    print(f"wrote {RESULTS / 'memory.md'} and {RESULTS / 'memory.png'}")


if __name__ == "__main__":
    main()
