"""check_solver_robustness: the verdict on constructed models, and the training options of
odenet.training._robust (regulariser closed forms, the solver sampler, the lr schedules)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import odenet
from odenet import (
    DynamicsRegularizer,
    MLPClassifier,
    SolverSampler,
    check_solver_robustness,
)
from odenet.training import scheduled_lr


def _mlp_model(layers=1, scale=1.0, seed=0, **solver):
    torch.manual_seed(seed)
    m = MLPClassifier(in_features=4, num_classes=3, hidden=8, depth=1, layers=layers,
                      **(solver or dict(method="euler", steps=4)))
    with torch.no_grad():
        for blk in m.ode_blocks():
            for p in blk.field.parameters():
                p.mul_(scale)
    return m


def test_smooth_field_is_an_ode_with_euler_order_near_one():
    m = _mlp_model(scale=0.7)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    rep = check_solver_robustness(m, x)
    assert rep.is_ode and rep.verdict == "this model is an ODE"
    assert abs(rep.orders["euler"] - 1.0) < 0.1
    assert rep.orders["rk4"] > 3.0
    assert m.ode_blocks()[0].solver_config()["method"] == "euler"  # restored
    assert "verdict: this model is an ODE" in rep.table()


def test_random_unrelated_layerwise_blocks_are_a_discrete_resnet(tmp_path):
    m = _mlp_model(layers=4, scale=6.0, seed=3)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    rep = check_solver_robustness(m, x, out=str(tmp_path), steps=(4, 8, 16))
    assert not rep.is_ode and rep.verdict == "this model is a discrete ResNet"
    assert rep.rows[0]["agreement"] < 0.95
    assert (tmp_path / "solver_robustness.png").stat().st_size > 1000


def test_check_solver_robustness_rejects_bad_input():
    with pytest.raises(TypeError, match="data must be"):
        check_solver_robustness(_mlp_model(), [1, 2])
    with pytest.raises(ValueError, match="max_samples"):
        check_solver_robustness(_mlp_model(), torch.zeros(2, 4), max_samples=0)


class _Linear(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.as_tensor(a, dtype=torch.float64))

    def forward(self, t, x):
        return x @ self.a.T


class _Wrap(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def ode_blocks(self):
        return [self.block]

    def forward(self, x):
        return self.block(x)


def test_regularizer_matches_closed_form_on_a_linear_field():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3)) * 0.5
    x0 = rng.normal(size=(20000, 3))
    block = odenet.ODEBlock(_Linear(a), method="euler", steps=4)
    model = _Wrap(block).train()
    torch.manual_seed(0)
    reg = DynamicsRegularizer(model, kinetic=1.0, jacobian=0.0)
    model(torch.as_tensor(x0))
    val = float(reg.value().detach())
    # augmented-state Euler: h * sum_k |A x_k|^2, x_{k+1} = (I + hA) x_k
    h, xs, want = 0.25, x0.copy(), 0.0
    for _ in range(4):
        want += h * np.mean(np.sum((xs @ a.T) ** 2, axis=1))
        xs = xs + h * xs @ a.T
    assert val == pytest.approx(want, rel=1e-10)
    reg.remove()
    reg = DynamicsRegularizer(model, kinetic=0.0, jacobian=1.0)
    model(torch.as_tensor(x0))
    val = float(reg.value().detach())
    # Hutchinson: E|eps^T A|^2 = |A|_F^2 at every time, integrated over [0, 1]
    fro = float(np.sum(a * a))
    assert val == pytest.approx(fro, rel=0.02)  # 4 x 20000 probes: ~0.5 % standard error
    assert reg.last["jacobian"] == pytest.approx(val)
    reg.remove()
    assert not block.field._forward_hooks


def test_regularizer_kinetic_under_dopri5_approaches_the_exact_integral():
    from scipy.integrate import quad
    from scipy.linalg import expm

    a = np.array([[-0.5, 1.0], [-1.0, -0.5]])
    x0 = np.array([[1.0, 0.5]])
    block = odenet.ODEBlock(_Linear(a), method="dopri5", rtol=1e-8, atol=1e-10)
    model = _Wrap(block).train()
    reg = DynamicsRegularizer(model, kinetic=1.0)
    model(torch.as_tensor(x0))
    val = float(reg.value().detach())
    exact = quad(lambda t: float(np.sum((a @ expm(a * t) @ x0[0]) ** 2)), 0, 1, epsabs=1e-12)[0]
    # a Riemann sum over the solver's stage times: first order in the largest gap
    assert val == pytest.approx(exact, rel=0.05)


def test_regularizer_rejects_bad_weights():
    with pytest.raises(ValueError, match="kinetic"):
        DynamicsRegularizer(_mlp_model(), kinetic=-1.0)
    with pytest.raises(ValueError, match="needs kinetic"):
        DynamicsRegularizer(_mlp_model())


def test_solver_sampler_draws_deterministically_and_restores():
    m = _mlp_model()
    s = SolverSampler("explicit", p=1.0, seed=0)
    cfg1 = s.draw(m, 0, 3)
    assert m.ode_blocks()[0].solver_config()["method"] == cfg1["method"]
    s.restore(m)
    assert m.ode_blocks()[0].solver_config()["method"] == "euler"
    assert s.draw(m, 0, 3) == cfg1
    s.restore(m)
    with pytest.raises(ValueError, match="unknown solver family"):
        SolverSampler("nope")
    with pytest.raises(ValueError, match="`p`"):
        SolverSampler(p=0.0)


def test_scheduled_lr_shapes():
    assert scheduled_lr(1.0, "constant", 0.7) == 1.0
    assert scheduled_lr(1.0, "cosine", 0.0) == 1.0
    assert scheduled_lr(1.0, "cosine", 0.5) == pytest.approx(0.5)
    assert scheduled_lr(1.0, "onecycle", 0.0) == pytest.approx(0.1)
    assert scheduled_lr(1.0, "onecycle", 0.2) == pytest.approx(1.0)
    assert scheduled_lr(1.0, "onecycle", 1.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_schedule"):
        scheduled_lr(1.0, "step", 0.1)


def test_fit_with_robust_training_and_regularizer_restores_the_solver(tmp_path):
    res = odenet.train(model="resnet", data="circles", epochs=1, out=None, quiet=True, width=8,
                       limit_train=64, limit_test=32, lr_schedule="onecycle", kinetic=0.01,
                       jacobian_reg=0.01, robust="explicit")
    assert res.model.ode_blocks()[0].solver_config()["method"] == "euler"
    assert math.isfinite(res.metrics[-1]["train_loss"])
    assert not res.model.ode_blocks()[0].field._forward_hooks


def test_cli_diagnose_writes_table_json_and_png(tmp_path, capsys):
    import json

    from odenet.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "circles", "--epochs", "1", "--width", "8", "--limit-train", "64",
                 "--limit-test", "32", "--out", str(run), "--quiet", "--robust", "--lr-schedule", "cosine"]) == 0
    capsys.readouterr()
    assert main(["diagnose", str(run / "checkpoint.pt"), "--out", str(tmp_path / "diag"),
                 "--max-samples", "32"]) == 0
    out = capsys.readouterr().out
    assert "verdict: this model is" in out
    rep = json.loads((tmp_path / "diag" / "solver_robustness.json").read_text())
    assert rep["verdict"] in ("this model is an ODE", "this model is a discrete ResNet")
    assert rep["rows"][0]["solver"] == "own: euler/4"
    assert (tmp_path / "diag" / "solver_robustness.png").is_file()
    assert main(["diagnose", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "d2")]) == 2


@pytest.mark.parametrize("view", ["implicit", "node"])
def test_regularizer_trains_the_implicit_and_node_views(view):
    res = odenet.train(model=view, data="circles", epochs=1, out=None, quiet=True, width=8,
                       limit_train=32, limit_test=16, batch_size=16, kinetic=0.01, jacobian_reg=0.01)
    assert math.isfinite(res.metrics[-1]["train_loss"])
    blk = res.model.ode_blocks()[0]
    assert not blk.field._forward_hooks and not blk._forward_pre_hooks
