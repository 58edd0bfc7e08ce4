"""Tests of odenet.training and odenet.robustness._attacks: resume equivalence, checkpoints, seeds, FGSM."""

import copy
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from odenet.data._classification import load_dataset
from odenet._io import CheckpointError, load_checkpoint
from odenet.robustness._attacks import accuracy_vs_epsilon, fgsm, noise_accuracy
from odenet.training import (VIEWS, TrainingError, evaluate, fit, get_rng_state, resolve_device,
                           set_rng_state, set_seed, solver_config_for, train)

TIME_KEYS = {"epoch_time"}


class Tiny(nn.Module):
    """Any classifier works with fit(); this one has a config like the odenet models."""

    def __init__(self, in_features=2, num_classes=2, hidden=16):
        super().__init__()
        self.config = dict(in_features=in_features, num_classes=num_classes, hidden=hidden)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.Tanh(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def circles():
    return load_dataset("circles", n_samples=300)


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def _fresh(seed=0, **kw):
    torch.manual_seed(seed)
    return Tiny(**kw)


def test_resume_equivalence_generic_model(circles, tmp_path):
    kw = dict(batch_size=32, lr=1e-2, seed=5, quiet=True)
    straight = fit(_fresh(), circles, epochs=3, out=tmp_path / "a", **kw)
    fit(_fresh(), circles, epochs=1, out=tmp_path / "b", **kw)
    # a different, unrelated initialisation: resume must overwrite it from the checkpoint
    resumed = fit(_fresh(seed=99), circles, epochs=3, out=tmp_path / "b", resume=True, **kw)
    assert resumed.resumed_from == 1
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert _strip(straight.metrics) == _strip(resumed.metrics)
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]
    assert _strip(saved) == _strip(straight.metrics)
    assert (tmp_path / "b" / "metrics.csv").read_text().count("\n") == 4  # header + 3 epochs
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 3


def test_training_reduces_loss_and_is_deterministic(circles):
    a = fit(_fresh(), circles, epochs=6, batch_size=32, lr=5e-2, quiet=True)
    b = fit(_fresh(), circles, epochs=6, batch_size=32, lr=5e-2, quiet=True)
    assert _strip(a.metrics) == _strip(b.metrics)
    assert a.metrics[-1]["train_loss"] < 0.8 * a.metrics[0]["train_loss"]
    ev = evaluate(a.model, circles.x_test, circles.y_test, batch_size=7)
    with torch.no_grad():
        logits = a.model(circles.x_test)
    assert ev["accuracy"] == pytest.approx(float((logits.argmax(1) == circles.y_test).float().mean()))
    assert ev["loss"] == pytest.approx(float(F.cross_entropy(logits, circles.y_test)), rel=1e-5)
    assert a.metrics[-1]["test_acc"] == ev["accuracy"]


def test_resume_refuses_mismatches(circles, tmp_path):
    kw = dict(batch_size=32, quiet=True, out=tmp_path)
    fit(_fresh(hidden=32), circles, epochs=1, **kw)
    with pytest.raises(CheckpointError, match="has hidden=32, model has hidden=16"):
        fit(_fresh(hidden=16), circles, epochs=2, resume=True, **kw)
    with pytest.raises(CheckpointError, match="batch_size=32, this run has batch_size=16"):
        fit(_fresh(hidden=32), circles, epochs=2, resume=True, out=tmp_path, batch_size=16,
            quiet=True)
    with pytest.raises(ValueError, match="already holds checkpoint.pt"):
        fit(_fresh(hidden=32), circles, epochs=1, **kw)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt"):
        fit(_fresh(hidden=32), circles, epochs=2, resume=True, **kw)
    with pytest.raises(CheckpointError, match="does not exist"):
        fit(_fresh(), circles, epochs=2, resume=True, out=tmp_path / "empty", quiet=True)


def test_nonfinite_loss_raises(circles):
    class Broken(Tiny):
        def forward(self, x):
            return super().forward(x) * float("nan")

    with pytest.raises(TrainingError, match="epoch 1, batch 1"):
        fit(Broken(), circles, epochs=1, quiet=True)


def test_bad_arguments(circles):
    with pytest.raises(ValueError, match="epochs"):
        fit(Tiny(), circles, epochs=-1)
    with pytest.raises(ValueError, match="batch_size"):
        fit(Tiny(), circles, epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        fit(Tiny(), circles, epochs=1, lr=0)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fit("net", circles, epochs=1)
    with pytest.raises(ValueError, match="in_features=3 but dataset 'circles' needs in_features=2"):
        fit(Tiny(in_features=3), circles, epochs=1)
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="seed"):
        set_seed(-1)


def test_rng_state_roundtrip():
    set_seed(3)
    state = get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_solver_config_for():
    assert solver_config_for("resnet") == VIEWS["resnet"]
    assert solver_config_for("node", rtol=1e-5)["rtol"] == 1e-5
    assert solver_config_for("implicit", root_finder="newton")["options"] == {
        "root_finder": "newton", "root_rtol": 1e-3, "root_atol": 1e-4}
    assert solver_config_for("implicit")["options"]["jvp"] == "finite_difference"
    assert solver_config_for("implicit", root_finder="newton_krylov")["options"]["jvp"] == "finite_difference"
    cfg = solver_config_for("node", method="rk4")
    assert cfg["method"] == "rk4" and cfg["steps"] == 4 and cfg["options"] is None
    assert solver_config_for("resnet", method="rk4", steps=None)["steps"] == 4
    with pytest.raises(ValueError, match="unknown model 'cnn'"):
        solver_config_for("cnn")
    with pytest.raises(TypeError, match="unknown solver setting"):
        solver_config_for("resnet", stepsize=3)


# ----------------------------------------------------------------------------- robustness

def test_fgsm_matches_hand_computed_perturbation(circles):
    model = fit(_fresh(), circles, epochs=2, batch_size=32, lr=2e-2, quiet=True).model.eval()
    x, y = circles.x_test[:20], circles.y_test[:20]
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y).backward()
    want = x + 0.3 * xr.grad.sign()
    assert torch.equal(fgsm(model, x, y, 0.3), want)
    assert torch.equal(fgsm(model, x, y, 0.0), x)
    assert float(fgsm(model, x, y, 10.0, clamp=(-1.0, 1.0)).abs().max()) <= 1.0
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(model, x, y, -0.1)


def test_accuracy_vs_epsilon_on_digits():
    digits = load_dataset("digits", limit_train=600, limit_test=200)
    torch.manual_seed(0)
    model = Tiny(in_features=64, num_classes=10, hidden=32)
    model = fit(model, digits, epochs=3, batch_size=32, lr=1e-2, quiet=True).model
    clean = evaluate(model, digits.x_test, digits.y_test)["accuracy"]
    eps = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4]
    accs = accuracy_vs_epsilon(model, digits, eps)
    assert accs[0] == clean  # exactly, not approximately
    assert clean > 0.6
    assert all(b <= a + 0.02 for a, b in zip(accs, accs[1:])), accs  # monotone up to noise
    assert accs[-1] < clean - 0.3
    noisy = noise_accuracy(model, digits, [0.0, 0.05, 0.5], seed=1)
    assert noisy[0] == clean and noisy == noise_accuracy(model, digits, [0.0, 0.05, 0.5], seed=1)
    assert noisy[2] < clean
    with pytest.raises(ValueError, match="epsilons must not be empty"):
        accuracy_vs_epsilon(model, digits, [])
    with pytest.raises(ValueError, match="split"):
        noise_accuracy(model, digits, [0.1], split="valid")


# ----------------------------------------------------------------------------- odenet models

def test_train_resume_equivalence_odenet_model(tmp_path):
    kw = dict(model="resnet", data="circles", batch_size=64, lr=1e-2, seed=1, width=8, quiet=True,
              device="cpu", limit_train=256, limit_test=64)
    straight = train(epochs=2, out=str(tmp_path / "a"), **kw)
    train(epochs=1, out=str(tmp_path / "b"), **kw)
    resumed = train(epochs=2, out=str(tmp_path / "b"), resume=True, **kw)
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert _strip(straight.metrics) == _strip(resumed.metrics)
    with pytest.raises(CheckpointError, match="hidden=8, model has hidden=16|width=8, model has width=16"):
        train(epochs=3, out=str(tmp_path / "b"), resume=True, **{**kw, "width": 16})
    # the solver is not part of the weights: resuming as a Neural ODE is allowed
    node = train(epochs=3, out=str(tmp_path / "b"), resume=True, method="rk4", **kw)
    assert len(node.metrics) == 3 and node.metrics[-1]["nfe_forward"] == 16  # rk4: 4 stages x 4 steps


def _view_param(view):
    import solvers

    cfg = VIEWS[view]
    missing = cfg["method"] not in solvers.METHODS or cfg["gradient"] not in solvers.GRADIENT_MODES
    return pytest.param(view, marks=pytest.mark.skipif(missing, reason=f"solvers cannot run the {view} view yet"))


@pytest.mark.parametrize("view", [_view_param(v) for v in VIEWS])
def test_views_train_and_count_evaluations(view):
    res = train(model=view, data="circles", epochs=1, batch_size=64, width=8, out=None, quiet=True,
                device="cpu", limit_train=256, limit_test=64)
    row = res.metrics[0]
    assert math.isfinite(row["train_loss"]) and 0 <= row["test_acc"] <= 1
    if view == "resnet":
        assert row["nfe_forward"] == 4  # Euler, 4 steps, one block
    assert row["nfe_forward"] > 0
    if view == "node":
        assert row["nfe_backward"] > 0  # the adjoint solves backwards with f evaluations
    if view == "implicit":
        _check_backward_euler(res.model)


def _backward_euler(field, x0, t1, steps):
    """Backward Euler in float64, each step solved by dense Newton on the whole batch to 1e-13."""
    f = copy.deepcopy(field).double().eval()
    x, h = x0.double(), t1 / steps
    for k in range(steps):
        tk = torch.tensor((k + 1) * h, dtype=torch.float64)

        def G(z):
            return z - x - h * f(tk, z)

        z = x.clone()
        for _ in range(30):
            J = torch.autograd.functional.jacobian(G, z).reshape(z.numel(), z.numel())
            dz = torch.linalg.solve(J, -G(z).reshape(-1)).reshape(z.shape)
            z = z + dz
            if float(dz.abs().max()) < 1e-13:
                break
        x = z
    return x


def _check_backward_euler(model):
    """The trained implicit view's block output is backward Euler of its own field."""
    model.eval()
    blk = model.blocks[0]
    seen = {}
    hook = blk.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0].detach(), y=out.detach()))
    with torch.no_grad():
        model(load_dataset("circles", seed=0).x_test[:16])
    hook.remove()
    cfg = blk.solver_config()
    assert cfg["method"] == "implicit_euler" and cfg["steps"] == 4
    with torch.no_grad():
        ref = _backward_euler(blk.field, seen["x"], cfg["t1"], cfg["steps"])
    opts = cfg["options"]
    scaled = (seen["y"].double() - ref).abs() / (opts["root_atol"] + opts["root_rtol"] * ref.abs())
    assert float((ref - seen["x"].double()).abs().max()) > 1.0  # the block moves the state (measured 16.8)
    # the root test is a per-sample RMS at root_rtol=1e-3/root_atol=1e-4, float32, over 4 steps:
    # measured 1.4 root tolerances at worst (element-wise), bound 5
    assert float(scaled.max()) <= 5.0


def test_load_model_and_swap_solver(tmp_path):
    from odenet.training import load_model

    res = train(model="resnet", data="circles", epochs=1, width=8, out=str(tmp_path), quiet=True,
                device="cpu")
    model = load_model(tmp_path / "checkpoint.pt")
    d = load_dataset("circles", seed=0)
    a = evaluate(model, d.x_test, d.y_test)
    assert a == evaluate(res.model, d.x_test, d.y_test)
    model_node = load_model(tmp_path / "checkpoint.pt", **solver_config_for("node"))
    assert model_node.blocks[0].solver_config()["method"] == "dopri5"
    model_node.eval(), res.model.eval()
    with torch.no_grad():
        node_logits = model_node(d.x_test)
        nfe = model_node.blocks[0].nfe_forward
        with res.model.using_solver(**solver_config_for("node")):  # the trained weights under dopri5
            ref = res.model(d.x_test)
        euler_logits = model(d.x_test)
    assert torch.equal(node_logits, ref)  # the reloaded weights, solved by the new solver
    assert nfe > 4 and nfe % 6 == 2  # dopri5 (FSAL: 6 per step + 2), not Euler's 4 (measured 26)
    assert float((node_logits - euler_logits).abs().max()) > 1e-3  # the swap changed the solve (1.4)
    assert evaluate(model_node, d.x_test, d.y_test)["accuracy"] == pytest.approx(float((ref.argmax(1) == d.y_test).double().mean()), abs=1e-9)


def test_ema_weights_match_a_hand_computed_average(circles):
    """ema_decay: the returned weights and every epoch's test metrics are those of the average
    avg <- d * avg + (1 - d) * w over the weights after every optimiser step, from the initial ones."""
    decay = 0.9
    model = _fresh()
    init = [p.detach().double().clone() for p in model.parameters()]
    seen = []  # the live weights after every optimiser step
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(
        lambda opt, args, kw: seen.append([p.detach().double().clone() for p in model.parameters()]))
    averages, live = [], []
    try:
        res = fit(model, circles, epochs=3, batch_size=32, lr=3e-2, seed=1, quiet=True, ema_decay=decay,
                  on_epoch=lambda row: live.append([p.detach().clone() for p in model.parameters()]))
    finally:
        handle.remove()
    assert len(seen) == 3 * math.ceil(len(circles.y_train) / 32)
    avg = init
    for k, w in enumerate(seen, 1):
        avg = [decay * a + (1 - decay) * x for a, x in zip(avg, w)]
        if k % (len(seen) // 3) == 0:
            averages.append(avg)
    for got, want in zip(res.model.parameters(), averages[-1]):
        assert torch.allclose(got.double(), want, atol=1e-6)
    # training continued from the live weights (they are not the average, which lags)
    assert max(float((a - w.double()).abs().max()) for a, w in zip(averages[-1], live[-1])) > 1e-2
    assert all(torch.allclose(a.double(), b) for a, b in zip(live[-1], seen[-1]))
    # each epoch's test metrics were measured with that epoch's average
    for row, avg in zip(res.metrics, averages):
        probe = _fresh()
        with torch.no_grad():
            for p, a in zip(probe.parameters(), avg):
                p.copy_(a)
        ev = evaluate(probe, circles.x_test, circles.y_test)
        assert row["test_loss"] == pytest.approx(ev["loss"], rel=1e-5)
        assert row["test_acc"] == pytest.approx(ev["accuracy"], abs=1e-12)


def test_ema_resume_is_exact_and_refuses_a_mismatch(circles, tmp_path):
    kw = dict(batch_size=32, lr=1e-2, seed=5, quiet=True, ema_decay=0.8)
    straight = fit(_fresh(), circles, epochs=3, out=tmp_path / "a", **kw)
    fit(_fresh(), circles, epochs=1, out=tmp_path / "b", **kw)
    resumed = fit(_fresh(seed=99), circles, epochs=3, out=tmp_path / "b", resume=True, **kw)
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert _strip(straight.metrics) == _strip(resumed.metrics)
    with pytest.raises(CheckpointError, match="ema_decay"):
        fit(_fresh(), circles, epochs=4, out=tmp_path / "b", resume=True, **{**kw, "ema_decay": None})
    with pytest.raises(CheckpointError, match="ema_decay"):
        fit(_fresh(), circles, epochs=4, out=tmp_path / "b", resume=True, **{**kw, "ema_decay": 0.9})
    fit(_fresh(), circles, epochs=1, out=tmp_path / "c", **{**kw, "ema_decay": None})
    with pytest.raises(CheckpointError, match="ema_decay"):
        fit(_fresh(), circles, epochs=2, out=tmp_path / "c", resume=True, **kw)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.9"])
def test_ema_decay_must_lie_in_the_open_unit_interval(circles, bad):
    with pytest.raises(ValueError, match=r"ema_decay must be a number in \(0, 1\)"):
        fit(Tiny(), circles, epochs=1, ema_decay=bad)


def test_load_model_loads_the_weight_average(tmp_path):
    """A run with ema_decay reports metrics of the average; load_model returns those weights
    (the checkpoint's live weights are only for resume), and a torn average is refused."""
    from odenet.training import load_model
    from odenet.training._views import build_view_model
    from odenet._io import save_checkpoint
    from odenet.training._tasks import ClassificationTask

    d = load_dataset("circles", seed=0)
    torch.manual_seed(0)
    model = build_view_model("resnet", d, width=8)
    res = fit(model, ClassificationTask(d), epochs=2, batch_size=32, lr=1e-2, seed=0, quiet=True, out=tmp_path / "r",
              ema_decay=0.9, device="cpu")
    loaded = load_model(tmp_path / "r" / "checkpoint.pt")
    for (k, a), (_, b) in zip(res.model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert evaluate(loaded, d.x_test, d.y_test)["accuracy"] == pytest.approx(res.metrics[-1]["test_acc"], abs=1e-12)
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    live = ckpt["model_state"]
    assert any(not torch.equal(live[k], v) for k, v in res.model.state_dict().items())  # the average differs from the live weights
    ckpt["ema_state"] = ckpt["ema_state"][:-1]
    save_checkpoint(tmp_path / "bad.pt", ckpt)
    with pytest.raises(CheckpointError, match="ema_state"):
        load_model(tmp_path / "bad.pt")
