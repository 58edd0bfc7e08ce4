"""Cost of the implicit view's training step against the ResNet's, per root-finder setting.

Compares, in one process on the same weights (a digits ImageClassifier with ``odenet
compare``'s field: parabolic conv, spectral norm, expansion 0, flatten head; briefly
trained as a ResNet so that the field is as stiff as in training), milliseconds per
training batch of 32 (forward and backward apart), root iterations, forward JVPs and
field evaluations, backward VJPs, and the relative error of the parameter gradient
against a tight (root_rtol 1e-7) solve.

    PYTHONPATH=$PWD python3 -m benchmarks.bench_implicit_view [--width 16] [--head flatten]
        [--expansion 0] [--no-spectral-norm] [--pretrain 6]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from odenet.data._classification import load_dataset
from odenet.training._loop import fit
from odenet.training._runtime import set_seed
from odenet.training._views import build_view_model, field_arch, solver_config_for

KEYS = ("n_root_iters", "n_f_evals", "n_jvp_evals", "n_vjp_evals", "n_precond_evals", "n_backward_root_iters")
NK = {"root_finder": "newton_krylov", "root_rtol": 1e-3, "root_atol": 1e-4}
SETTINGS = [
    ("newton_krylov 1e-3, autograd JVPs", dict(NK)),
    ("newton_krylov 1e-3, finite-difference JVPs (compare)", dict(NK, jvp="finite_difference")),
    ("  + explicit predictor", dict(NK, jvp="finite_difference", predictor="explicit")),
    ("  + field preconditioner", dict(NK, jvp="finite_difference", preconditioner="field")),
    ("  + field preconditioner, explicit predictor", dict(NK, jvp="finite_difference", preconditioner="field",
                                                       predictor="explicit")),
    ("  + preconditioner steps (no GMRES forward)", dict(NK, preconditioner="field", linear_solver="preconditioner")),
    ("  + preconditioner steps, explicit predictor", dict(NK, preconditioner="field", linear_solver="preconditioner",
                                                      predictor="explicit")),
    ("newton_krylov 1e-2, finite-difference JVPs", dict(NK, root_rtol=1e-2, root_atol=1e-3, jvp="finite_difference")),
    ("anderson 1e-3", {"root_finder": "anderson", "root_rtol": 1e-3, "root_atol": 1e-4}),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--head", default="flatten", choices=("pool", "flatten"))
    p.add_argument("--expansion", type=float, default=0.0)
    p.add_argument("--spectral-norm", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--pretrain", type=int, default=6, help="epochs as a ResNet before measuring")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("digits", seed=0)
    set_seed(0)
    m = build_view_model("resnet", data, width=a.width, head=a.head, spectral_norm=a.spectral_norm,
                         **field_arch("parabolic", a.expansion))
    if a.pretrain:
        fit(m, data, epochs=a.pretrain, batch_size=32, lr=1e-2, seed=0, device="cpu", out=None, quiet=True,
            lr_schedule="onecycle")
    B, nb = 32, 4
    xb, yb = data.x_train[:B * nb], data.y_train[:B * nb]

    def run(view, options):
        cfg = solver_config_for(view)
        if options is not None:
            cfg["options"] = options
        m.configure_solver(**cfg)
        tf = tb = 0.0
        agg = dict.fromkeys(KEYS, 0)
        grads = []
        for i in range(nb):
            x, y = xb[B * i:B * (i + 1)], yb[B * i:B * (i + 1)]
            m.zero_grad()
            t0 = time.perf_counter()
            loss = F.cross_entropy(m(x), y)
            t1 = time.perf_counter()
            loss.backward()
            tb += time.perf_counter() - t1
            tf += t1 - t0
            s = m.blocks[0].last_stats
            for k in KEYS:
                agg[k] += getattr(s, k)
            grads.append(torch.cat([q.grad.flatten() for q in m.parameters() if q.grad is not None]))
        return tf / nb, tb / nb, {k: v / nb for k, v in agg.items()}, torch.cat(grads)

    run("resnet", None)  # warm-up
    rf, rb, _, _ = run("resnet", None)
    _, _, _, ref = run("implicit", dict(NK, root_rtol=1e-7, root_atol=1e-8))
    print(f"width {a.width}, head {a.head}, expansion {a.expansion}, spectral norm {a.spectral_norm}, "
          f"{a.pretrain} epoch(s) as a ResNet; per batch of {B}, mean of {nb}")
    print(f"{'setting':54s} {'x resnet':>8s} {'fwd ms':>8s} {'bwd ms':>8s} {'root its':>8s} {'f fwd':>6s} "
          f"{'JVP':>6s} {'VJP':>6s} {'P^-1':>6s} {'grad err':>9s}")
    print(f"{'resnet (euler/4)':54s} {1.0:8.1f} {rf * 1e3:8.1f} {rb * 1e3:8.1f}")
    for label, opts in SETTINGS:
        try:
            f_, b_, st, g = run("implicit", opts)
        except Exception as e:  # a setting that fails is reported, the others still run
            print(f"{label:54s} failed: {type(e).__name__}: {str(e)[:90]}")
            continue
        err = float((g - ref).norm() / ref.norm())
        print(f"{label:54s} {(f_ + b_) / (rf + rb):8.1f} {f_ * 1e3:8.1f} {b_ * 1e3:8.1f} {st['n_root_iters']:8.1f} "
              f"{st['n_f_evals']:6.1f} {st['n_jvp_evals']:6.1f} {st['n_vjp_evals']:6.1f} {st['n_precond_evals']:6.1f} "
              f"{err:9.1e}", flush=True)


if __name__ == "__main__":
    main()
