"""Cost of the implicit view's training step against the ResNet's, per root-finder setting.

Compares, in one process on the same weights (a digits ImageClassifier, parabolic conv
field, briefly trained as a ResNet so that the field is as stiff as in training), seconds
per training batch of 32 (forward + backward), forward f-evaluations, backward VJPs and the
relative error of the parameter gradient against a tight (root_rtol 1e-7) solve.

    PYTHONPATH=$PWD python3 -m benchmarks.bench_implicit_view [WIDTH] [HEAD] [PRETRAIN_EPOCHS]
"""
import sys, time, torch
import torch.nn.functional as F
from odenet.data._classification import load_dataset
from odenet.training._views import build_view_model, field_arch, solver_config_for
from odenet.training._loop import fit
from odenet.training._runtime import set_seed
args = sys.argv[1:] + ["32", "pool", "3"][len(sys.argv) - 1:]
width, head, pre = int(args[0]), args[1], int(args[2])
data = load_dataset("digits", seed=0)
set_seed(0)
m = build_view_model("resnet", data, width=width, head=head, **field_arch("parabolic"))
if pre:
    fit(m, data, epochs=pre, batch_size=32, lr=1e-2, seed=0, device="cpu", out=None, quiet=True, lr_schedule="onecycle")
xb, yb = data.x_train[:32*4], data.y_train[:32*4]
def run(opts, ref_grads=None, label=""):
    cfg = solver_config_for("implicit")
    cfg["options"] = opts
    m.configure_solver(**cfg)
    t=time.perf_counter(); fw=bw=vj=0; its=[]
    grads=[]
    for i in range(4):
        x, y = xb[32*i:32*(i+1)], yb[32*i:32*(i+1)]
        m.zero_grad()
        loss = F.cross_entropy(m(x), y); loss.backward()
        s = m.blocks[0].last_stats
        fw += s.n_f_evals; bw += s.n_f_evals_backward; vj += s.n_vjp_evals
        its.append((s.n_root_iters if hasattr(s,'n_root_iters') else None))
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    dt=(time.perf_counter()-t)/4
    g=torch.cat(grads)
    err = None if ref_grads is None else float((g-ref_grads).norm()/ref_grads.norm())
    print(f"{label:28s} x{dt / t_res:6.1f} resnet  s/batch {dt:.3f} fwd {fw/4:.1f} bwd {bw/4:.1f} vjp {vj/4:.1f} grad_rel_err {err} fwd JVPs {s.n_jvp_evals} root iters {s.n_root_iters}", flush=True)
    return g
# resnet reference time
cfg = solver_config_for("resnet"); m.configure_solver(**cfg)
t=time.perf_counter()
for i in range(4):
    x, y = xb[32*i:32*(i+1)], yb[32*i:32*(i+1)]
    m.zero_grad(); F.cross_entropy(m(x), y).backward()
t_res = (time.perf_counter()-t)/4
print("resnet s/batch", t_res)
ref = run({"root_finder": "newton_krylov", "root_rtol": 1e-7, "root_atol": 1e-8}, label="tight nk 1e-7")
for lab, o in [("nk 1e-3 (default)", {"root_finder": "newton_krylov", "root_rtol": 1e-3, "root_atol": 1e-4}),
               ("nk 1e-3 explicit pred", {"root_finder": "newton_krylov", "root_rtol": 1e-3, "root_atol": 1e-4, "predictor": "explicit"}),
               ("nk 1e-2", {"root_finder": "newton_krylov", "root_rtol": 1e-2, "root_atol": 1e-3}),
               ("nk 1e-2 explicit", {"root_finder": "newton_krylov", "root_rtol": 1e-2, "root_atol": 1e-3, "predictor": "explicit"}),
               ("anderson 1e-3", {"root_finder": "anderson", "root_rtol": 1e-3, "root_atol": 1e-4}),
               ("anderson 1e-2", {"root_finder": "anderson", "root_rtol": 1e-2, "root_atol": 1e-3}),
               ("fixed_point 1e-2", {"root_finder": "fixed_point", "root_rtol": 1e-2, "root_atol": 1e-3}),
               ]:
    try:
        run(o, ref, lab)
    except Exception as e:
        print(f"{lab:28s} FAILED {type(e).__name__}: {str(e)[:120]}")
