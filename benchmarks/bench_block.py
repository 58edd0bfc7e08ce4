"""ODEBlock overhead and the per-batch cost of the three views of one vector field.

What it compares (all in ONE process, timings interleaved so machine load hits both sides):

1. ``ODEBlock(LayerwiseField(blocks, t1=L), method="euler", steps=L)`` against the
   hand-written ResNet ``for b in blocks: x = x + b(x)`` with the same weights, forward
   (no grad) and forward+backward, for an MLP ResNet (dim 64, batch 256, L=10) and a
   small conv ResNet (32 channels, 8x8, batch 64, L=4). Goal: ratio <= 1.05.
2. Per training batch (forward+backward) cost of the three views of the digits
   ImageClassifier: explicit ResNet (Euler, 4 steps), implicit ResNet (backward Euler,
   4 steps, the view's root finder) and Neural ODE (dopri5, adjoint), with function evaluations.
3. Each view trained briefly, then evaluated (forward, batch 256) under every view's
   solver: seconds per batch, forward function evaluations and test accuracy.

Run ``python -m benchmarks.bench_block`` (``--quick`` for a short run, ``--device cuda`` to
measure on a GPU; default ``--device cpu``). Writes
``benchmarks/results/block.md`` and ``benchmarks/results/block.png``. ``--overhead-only``
runs part 1 alone (a minute instead of many) and writes ``benchmarks/results/block_overhead.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import statistics
import time

import torch
from torch import nn
from tqdm.auto import tqdm

import odenet
import solvers

from ._report import RESULTS, parse_device, pyplot, save_figure, write_table



def _interleaved(fns: dict, repeats: int, inner: int, desc: str) -> dict:
    """Median and best seconds per call of each function, timed in alternation (in a
    fresh random order every repeat, so no function always runs after the same one)."""
    for fn in fns.values():  # warm-up
        for _ in range(3):
            fn()
    samples = {k: [] for k in fns}
    order, rng = list(fns), random.Random(0)
    for _ in tqdm(range(repeats), desc=desc, leave=False, disable=None):
        rng.shuffle(order)
        for k in order:
            fn = fns[k]
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[k].append((time.perf_counter() - t0) / inner)
    return {k: (statistics.median(v), min(v)) for k, v in samples.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resnet_pair(kind: str, device: torch.device):
    torch.manual_seed(0)
    if kind == "mlp":
        L, x = 10, torch.randn(256, 64)
        blocks = [nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64)) for _ in range(L)]
    else:
        L, x = 4, torch.randn(64, 32, 8, 8)
        blocks = [nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.Tanh(), nn.Conv2d(32, 32, 3, padding=1))
                  for _ in range(L)]
    block = odenet.ODEBlock(odenet.LayerwiseField(blocks, t1=L), method="euler", steps=L).to(device)
    x = x.to(device)

    def ref(h):
        for b in blocks:
            h = h + b(h)
        return h

    return block, ref, x


def bench_overhead(repeats: int, device: torch.device) -> tuple:
    rows, solve_rows = [], []
    for kind in ("mlp", "conv"):
        block, ref, x = _resnet_pair(kind, device)
        assert torch.equal(block(x), ref(x))  # the same computation, bit for bit
        xg = x.clone().requires_grad_(True)

        def fwd_block():
            with torch.no_grad():
                block(x)
            _sync(device)

        def fwd_ref():
            with torch.no_grad():
                ref(x)
            _sync(device)

        def fb_block():
            block(xg).sum().backward()
            _sync(device)

        def fb_ref():
            ref(xg).sum().backward()
            _sync(device)

        func = block.field.as_function()
        tgrid = torch.tensor([0.0, float(block.field.t1)], dtype=torch.float64, device=device)

        def fwd_solve():  # the same solve without the ODEBlock layer: attributes the overhead
            with torch.no_grad():
                solvers.solve(func, x, tgrid, method="euler", options=dict(step_size=1.0, check_finite=False))
            _sync(device)

        inner = 5 if kind == "mlp" else 2
        # "ref2" times the hand-written loop a second time: its ratio to "ref" is the noise floor
        r = _interleaved({"block": fwd_block, "ref": fwd_ref, "ref2": fwd_ref, "solve": fwd_solve}, repeats, inner,
                         f"{kind} forward")
        rows.append((kind, "forward", r["ref"][0], r["block"][0], r["block"][0] / r["ref"][0], r["block"][1] / r["ref"][1],
                     r["ref2"][0] / r["ref"][0]))
        solve_rows.append((kind, r["ref"][0], r["solve"][0], r["block"][0]))
        r = _interleaved({"block": fb_block, "ref": fb_ref, "ref2": fb_ref}, repeats, inner, f"{kind} fwd+bwd")
        rows.append((kind, "forward+backward", r["ref"][0], r["block"][0], r["block"][0] / r["ref"][0],
                     r["block"][1] / r["ref"][1], r["ref2"][0] / r["ref"][0]))
    return rows, solve_rows


def _available_views() -> list:
    views = ["resnet"]
    if "implicit_euler" in solvers.METHODS:
        views.append("implicit")
    views.append("node")
    return views


def _view_cfg(view: str) -> dict:
    cfg = odenet.solver_config_for(view)
    if cfg["gradient"] not in solvers.GRADIENT_MODES:  # adjoint not there yet: say so in the table
        cfg["gradient"] = "direct"
    return cfg


def _label(cfg: dict) -> str:
    s = cfg["method"] + (f"/{cfg['steps']}" if not solvers.METHODS[cfg["method"]].adaptive else "")
    if cfg["options"] and "root_finder" in cfg["options"]:
        s += f" ({cfg['options']['root_finder']})"
    return s + f", {cfg['gradient']}"


def bench_views(repeats: int, epochs: int, limit_train, device: torch.device) -> tuple:
    data = odenet.load_dataset("digits", limit_train=limit_train)
    views = _available_views()
    # the main job's architecture and learning rate (odenet compare's defaults), so the rows
    # describe the views users run
    width, lr = odenet.CompareConfig().width, odenet.CompareConfig().lr
    odenet.set_seed(0)
    base = odenet.build_view_model("resnet", data, width=width)
    init = copy.deepcopy(base.state_dict())
    xb, yb = data.x_train[:64].to(device), data.y_train[:64].to(device)
    train_rows, trained = [], {}
    for view in views:
        model = odenet.build_view_model("resnet", data, width=width)
        model.load_state_dict(init)
        model.to(device).configure_solver(**_view_cfg(view))

        def step():
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xb), yb).backward()
            _sync(device)

        r = _interleaved({"step": step}, max(3, repeats // 3), 1, f"{view} train step")
        nfe = model.nfe()
        train_rows.append((view, _label(model.ode_blocks()[0].solver_config()), r["step"][0], nfe["forward"],
                           sum(b.last_stats.n_f_evals_backward + b.last_stats.n_vjp_evals for b in model.ode_blocks())))
        try:
            trained[view] = odenet.fit(model, data, epochs=epochs, batch_size=64, lr=lr, seed=0, device=str(device),
                                       quiet=True).model
        except RuntimeError as exc:  # solvers.SolverError included: say so in the table, go on
            print(f"  training the {view} view failed: {type(exc).__name__}: {str(exc)[:160]}")
    cross = []
    xe = data.x_test[:256].to(device)
    for view, model in trained.items():
        own = model.ode_blocks()[0].solver_config()
        for other in views:
            model.configure_solver(**_view_cfg(other))
            try:
                acc = odenet.evaluate(model, data.x_test, data.y_test)["accuracy"]
            except RuntimeError as exc:  # solvers.SolverError included: a solver may fail on this field
                cross.append((view, other, float("nan"), 0, float("nan"), f"{type(exc).__name__}"))
                continue

            def fwd():
                with torch.no_grad():
                    model(xe)
                _sync(device)

            r = _interleaved({"fwd": fwd}, max(3, repeats // 3), 1, f"{view} as {other}")
            cross.append((view, other, r["fwd"][0], model.nfe()["forward"], acc, ""))
        model.configure_solver(**own)
    return train_rows, cross


def _plot(rows, train_rows, name):
    plt = pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{k}\n{m}" for k, m, *_ in rows]
    a1.bar(range(len(rows)), [r[4] for r in rows], color="tab:blue")
    a1.scatter(range(len(rows)), [r[6] for r in rows], color="black", marker="_", s=300, zorder=3,
               label="hand-written vs itself (noise)")
    a1.axhline(1.05, color="red", ls="--", label="goal 1.05")
    a1.axhline(1.0, color="black", lw=0.8)
    a1.set_xticks(range(len(rows)), labels, fontsize=8)
    a1.set(ylabel="ODEBlock time / hand-written ResNet", title="Euler ODEBlock overhead (median)")
    a1.legend()
    a2.bar(range(len(train_rows)), [1e3 * r[2] for r in train_rows], color="tab:green")
    a2.set_xticks(range(len(train_rows)), [f"{r[0]}\n{r[1]}" for r in train_rows], fontsize=7)
    a2.set(ylabel="ms per training batch (64 digits)", title="Three views, one field")
    fig.tight_layout()
    save_figure(fig, name)


def _machine_line(args, device) -> str:
    return (f"Machine: {platform.platform()}, torch {torch.__version__}, {args.threads} thread(s), "
            f"{os.cpu_count()} cores (shared with other jobs while measured), device {device}. Command: "
            f"`python -m benchmarks.bench_block{' --quick' if args.quick else ''}"
            f"{' --overhead-only' if args.overhead_only else ''}"
            f"{'' if device.type == 'cpu' else f' --device {args.device}'}`.")


def _overhead_md(rows, solve_rows) -> list:
    md = ["## ODEBlock(LayerwiseField(blocks, t1=L), euler, steps=L) vs `for b in blocks: x = x + b(x)`", "",
          "| net | pass | hand-written (ms) | ODEBlock (ms) | ratio (median) | ratio (best) | hand-written vs itself | goal |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {k} | {m} | {1e3 * tr:.3f} | {1e3 * tb:.3f} | {ra:.3f} | {rm:.3f} | {rn:.3f} | <= 1.05 |"
           for k, m, tr, tb, ra, rm, rn in rows]
    md += ["", "The hand-written loop is timed twice in the same interleaving; the ratio of the two "
           "medians (column 7) is the run's noise floor."]
    md += ["", "Forward overhead over the hand-written loop, split between `solvers.solve` (the same "
           "solve called directly) and the ODEBlock layer (ms):", "",
           "| net | solvers.solve | ODEBlock layer |", "|---|---|---|"]
    md += [f"| {k} | {1e3 * (ts - tr):+.3f} | {1e3 * (tb - ts):+.3f} |" for k, tr, ts, tb in solve_rows]
    return md


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, one short training epoch per view")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, for stable timings)")
    p.add_argument("--device", default="cpu", help="torch device to measure on, e.g. cpu or cuda (default cpu)")
    p.add_argument("--overhead-only", action="store_true",
                   help="only the ODEBlock-vs-ResNet overhead (part 1); writes results/block_overhead.md")
    args = p.parse_args(argv)
    device = parse_device(p, args.device)
    torch.set_num_threads(args.threads)
    repeats = 15 if args.quick else 60
    rows, solve_rows = bench_overhead(repeats if not args.overhead_only else (40 if args.quick else 200), device)
    print("ODEBlock(LayerwiseField, euler) vs hand-written ResNet (same process, interleaved):")
    for kind, mode, tr, tb, ratio, ratio_min, noise in rows:
        print(f"  {kind:4s} {mode:17s} ref {1e3 * tr:8.3f} ms  block {1e3 * tb:8.3f} ms  "
              f"ratio {ratio:.3f} (median)  {ratio_min:.3f} (best)  ref/ref {noise:.3f}")
    print("Forward overhead split (ms over the hand-written loop): solvers.solve itself / the ODEBlock layer:")
    for kind, tr, ts, tb in solve_rows:
        print(f"  {kind:4s} solve {1e3 * (ts - tr):+.3f}  ODEBlock layer {1e3 * (tb - ts):+.3f}")
    if args.overhead_only:
        md = ["# bench_block --overhead-only: ODEBlock overhead", "", _machine_line(args, device), ""]
        md += _overhead_md(rows, solve_rows)
        write_table("block_overhead.md", "\n".join(md))
        print(f"wrote {RESULTS / 'block_overhead.md'}")
        return
    train_rows, cross = bench_views(repeats, epochs=1 if args.quick else 3, limit_train=256 if args.quick else None,
                                  device=device)
    print("Per training batch (64 digits, forward+backward) of the three views:")
    for view, label, sec, nf, nb in train_rows:
        print(f"  {view:8s} {label:34s} {1e3 * sec:8.2f} ms  NFE fwd {nf:4d}  bwd (f+vjp) {nb:4d}")
    print("Trained models evaluated under each view's solver (forward, batch 256):")
    for view, other, sec, nf, acc, err in cross:
        print(f"  trained as {view:8s} run as {other:8s} {1e3 * sec:8.2f} ms  NFE {nf:4d}  test acc {100 * acc:5.1f}%"
              + (f"  (failed: {err})" if err else ""))

    md = ["# bench_block: ODEBlock overhead and the three views", "", _machine_line(args, device), ""]
    md += _overhead_md(rows, solve_rows)
    md += ["", "## Per training batch (64 digits, forward+backward), one field architecture", "",
           f"`odenet compare`'s architecture (parabolic conv field, width {odenet.CompareConfig().width}) and "
           f"learning rate; each view trained {1 if args.quick else 3} epoch(s) from the same initialisation.", "",
           "| view | solver | ms / batch | NFE forward | NFE backward (f + vjp) |", "|---|---|---|---|---|"]
    md += [f"| {v} | {lab} | {1e3 * s:.2f} | {nf} | {nb} |" for v, lab, s, nf, nb in train_rows]
    md += ["", "## Trained models evaluated under other solvers (forward, batch 256)", "",
           "| trained as | evaluated as | ms / batch | NFE | test accuracy % |", "|---|---|---|---|---|"]
    md += [f"| {v} | {o} | {1e3 * s:.2f} | {nf} | {100 * a:.1f} |" if not e else f"| {v} | {o} | failed: {e} | - | - |"
           for v, o, s, nf, a, e in cross]
    if device.type == "cpu":
        md += ["", "Measured on the CPU (`--device cpu`)."]
    else:
        md += ["", f"Measured on {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}."]
    write_table("block.md", "\n".join(md))
    _plot(rows, train_rows, "block.png")
    print(f"wrote {RESULTS / 'block.md'} and {RESULTS / 'block.png'}")


if __name__ == "__main__":
    main()
