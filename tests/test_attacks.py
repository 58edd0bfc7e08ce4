"""Attacks: PGD, transfer, Square, the l-inf box, NFE counting; exact answers on linear models."""

import pytest
import torch
from torch import nn

import odenet
from odenet.robustness import (AttackSettings, attack_suite, count_nfe, fgsm, linf_box, margin, pgd,
                               square_attack, transfer_pgd)

CLAMP = (-1.0, 2.0)


class Linear2(nn.Module):
    """Two-class linear model on [B, 1, 4, 4] images: logit_1 - logit_0 = w . x + c."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(16, 2, dtype=torch.float64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(2, 16, generator=g, dtype=torch.float64))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1))


def _points(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 3 - 1  # inside CLAMP
    return x


def _worst_corner(model, x, y, eps, clamp=CLAMP):
    """Exact maximiser of the CE loss of a 2-class linear model over the box: a corner."""
    w = (model.lin.weight[1] - model.lin.weight[0]).view(1, 1, 4, 4)
    direction = torch.where(y.view(-1, 1, 1, 1) == 0, w, -w).sign()  # pushes logit_other - logit_y up
    lo, hi = linf_box(x, eps, clamp)
    return torch.where(direction > 0, hi, lo)


def test_linf_box_contains_x_and_respects_range():
    x = _points()
    lo, hi = linf_box(x, 0.3, CLAMP)
    assert torch.all(lo <= x) and torch.all(x <= hi)
    assert torch.all(lo >= CLAMP[0]) and torch.all(hi <= CLAMP[1])
    assert torch.all(hi - lo <= 0.6 + 1e-12)
    lo0, hi0 = linf_box(x, 0.0, CLAMP)
    assert torch.equal(lo0, x) and torch.equal(hi0, x)


def test_fgsm_exact_on_linear_model():
    model = Linear2()
    x = _points()
    y = (torch.arange(len(x)) % 2)
    eps = 0.1
    out = fgsm(model, x, y, eps)  # no clamp: x + eps * sign(grad) exactly
    w = (model.lin.weight[1] - model.lin.weight[0]).view(1, 1, 4, 4)
    expect = x + eps * torch.where(y.view(-1, 1, 1, 1) == 0, w, -w).sign()
    assert torch.equal(out, expect)


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_pgd_reaches_the_exact_corner_on_linear_model(eps):
    model = Linear2()
    x = _points()
    y = (torch.arange(len(x)) % 2)
    g = torch.Generator().manual_seed(0)
    adv = pgd(model, x, y, eps, clamp=CLAMP, generator=g, early_stop=False)
    # 40 steps of 2.5 eps / 40 from any start reach the corner; projection keeps it there
    assert torch.allclose(adv, _worst_corner(model, x, y, eps), atol=1e-12, rtol=0)


def test_pgd_robust_accuracy_matches_closed_form():
    model = Linear2(seed=3)
    x = _points(200, seed=4)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point correct when clean
    eps = 0.05
    adv = pgd(model, x, y, eps, clamp=CLAMP, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = (model(_worst_corner(model, x, y, eps)).argmax(1) == y).float().mean()
        got = (model(adv).argmax(1) == y).float().mean()
    assert 0 < float(exact) < 1  # the case is not trivial
    assert float(got) == pytest.approx(float(exact), abs=0)


def test_pgd_projection_and_loss_at_least_fgsm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 5)).double()
    x = _points(100, seed=5)
    y = torch.randint(0, 5, (100,), generator=torch.Generator().manual_seed(2))
    eps = 0.15
    adv = pgd(model, x, y, eps, clamp=CLAMP, generator=torch.Generator().manual_seed(3), early_stop=False)
    assert (adv - x).abs().max() <= eps + 1e-12
    assert adv.min() >= CLAMP[0] and adv.max() <= CLAMP[1]
    f = fgsm(model, x, y, eps, clamp=CLAMP)
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        assert float(ce(model(adv), y)) >= float(ce(model(f), y))


def test_pgd_eps_zero_and_bad_arguments():
    model = Linear2()
    x = _points(8)
    y = torch.zeros(8, dtype=torch.long)
    assert torch.equal(pgd(model, x, y, 0.0), x)
    with pytest.raises(ValueError, match="epsilon"):
        pgd(model, x, y, -0.1)
    with pytest.raises(TypeError, match="epsilon"):
        pgd(model, x, y, "0.1")
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, 0.1, steps=0)


def test_square_attack_stays_in_box_and_never_beats_the_optimum():
    model = Linear2(seed=3)
    x = _points(100, seed=4)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.05
    adv = square_attack(model, x, y, eps, queries=300, clamp=CLAMP, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= eps + 1e-12
    assert adv.min() >= CLAMP[0] and adv.max() <= CLAMP[1]
    with torch.no_grad():
        exact = float((model(_worst_corner(model, x, y, eps)).argmax(1) == y).float().mean())
        got = float((model(adv).argmax(1) == y).float().mean())
        clean_margin = margin(model(x), y)
        adv_margin = margin(model(adv), y)
    assert got >= exact  # the corner is the optimum: no attack in the box can do better
    assert got < 1.0     # and the random search finds some of it
    assert torch.all(adv_margin <= clean_margin + 1e-12) or got < 1.0
    assert torch.equal(square_attack(model, x, y, 0.0), x)
    with pytest.raises(ValueError, match="queries"):
        square_attack(model, x, y, 0.1, queries=0)


def test_margin_sign_is_misclassification():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    assert torch.allclose(margin(logits, y), torch.tensor([1.0, -2.0]))


def _digit_model(**kw):
    data = odenet.load_dataset("digits", limit_train=64, limit_test=32)
    torch.manual_seed(0)
    return odenet.build_view_model("resnet", data, width=4, **kw), data


def test_transfer_with_identical_surrogate_is_pgd():
    model, data = _digit_model()
    model.eval()
    x, y = data.x_test[:16], data.y_test[:16]
    own = {"method": "euler", "steps": 4, "gradient": "direct", "options": None}
    a = transfer_pgd(model, x, y, 0.2, surrogate=own, generator=torch.Generator().manual_seed(0))
    b = pgd(model, x, y, 0.2, generator=torch.Generator().manual_seed(0), early_stop=False)
    assert torch.equal(a, b)  # transfer runs every step on the surrogate (no early stop)
    assert model.ode_blocks()[0].solver_config()["method"] == "euler"  # restored
    rk = transfer_pgd(model, x, y, 0.2, generator=torch.Generator().manual_seed(0))
    assert (rk - x).abs().max() <= 0.2 + 1e-6
    assert model.ode_blocks()[0].solver_config()["method"] == "euler"


def test_count_nfe_counts_euler_steps():
    model, data = _digit_model()
    x = data.x_test[:8]
    with count_nfe(model) as n:
        model(x)
        model(x)
    assert n.forward == 8  # 2 forwards x 4 Euler steps, one block
    with count_nfe(model) as n:
        pgd(model, x, data.y_test[:8], 0.1, steps=5, early_stop=False)
    assert n.forward == 20


def test_attack_suite_eps0_is_clean_and_worst_is_below_each():
    model, data = _digit_model()
    x, y = data.x_test, data.y_test
    res = attack_suite(model, x, y, [0.0, 0.1, 0.3], std=data.std, clamp=data.normalised_range(),
                       settings=AttackSettings(pgd_steps=5, square_queries=10))
    for a, rec in res["attacks"].items():
        assert rec["accuracy"]["0.0"] == res["clean_accuracy"], a
    for e in ("0.1", "0.3"):
        assert res["worst"][e] <= min(res["attacks"][a]["accuracy"][e] for a in ("fgsm", "pgd", "transfer", "square"))
    with pytest.raises(ValueError, match="attack"):
        attack_suite(model, x, y, [0.1], std=1.0, clamp=None, attacks=["cw"])
    with pytest.raises(ValueError, match="epsilons"):
        attack_suite(model, x, y, [1.5], std=1.0, clamp=None)


def test_batched_epsilons_equal_per_epsilon_runs_on_a_fixed_step_model():
    # One batch of k * N rows, each row in its own ball, is the per-epsilon runs stacked: on
    # a fixed-step (Euler) model the rows do not interact, so every crafted input is the same.
    model, data = _digit_model()
    model.double()
    x, y = data.x_test[:24].double(), data.y_test[:24]
    eps = [0.0, 0.02, 0.1, 0.3]
    keep = [(a, e) for a in ("fgsm", "pgd", "transfer", "square", "noise") for e in eps]
    runs = {}
    for batched in (True, False):
        st = AttackSettings(pgd_steps=6, square_queries=15, batch_epsilons=batched)
        runs[batched] = attack_suite(model, x, y, eps, std=data.std, clamp=data.normalised_range(), settings=st,
                                     seed=3, batch_size=16, keep_inputs=keep)
    a, b = runs[True], runs[False]
    for name in a["attacks"]:
        assert a["attacks"][name]["accuracy"] == b["attacks"][name]["accuracy"], name
    for k in keep:
        assert torch.equal(a["inputs"][k], b["inputs"][k]), k
    assert torch.equal(a["inputs"][("pgd", 0.0)], x)
    # and the per-epsilon path is the public attacks themselves
    en = 0.1 / data.std
    gen = torch.Generator().manual_seed(3 * 1000003 + 1009 * 1 + 2)  # attack 1 (pgd), epsilon 2 (0.1)
    own = torch.cat([pgd(model, x[i:i + 16], y[i:i + 16], en, steps=6, alpha=2.5 * en / 6,
                         clamp=data.normalised_range(), generator=gen) for i in (0, 16)])
    assert torch.equal(a["inputs"][("pgd", 0.1)], own)
    gen = torch.Generator().manual_seed(3 * 1000003 + 1009 * 3 + 3)  # square, epsilon 0.3
    own = torch.cat([square_attack(model, x[i:i + 16], y[i:i + 16], 0.3 / data.std, queries=15,
                                   clamp=data.normalised_range(), generator=gen) for i in (0, 16)])
    assert torch.equal(a["inputs"][("square", 0.3)], own)
    assert all(p.requires_grad for p in model.parameters())  # frozen for the call only


def test_frozen_parameters_leave_the_adjoint_input_gradient_unchanged():
    # attack_suite freezes the weights: under the checkpointed adjoint the backward pass then
    # integrates the state and input adjoint only, not the parameter adjoints. The input
    # gradient is the same up to the backward solve's tolerance.
    import torch.nn.functional as F
    data = odenet.load_dataset("digits", limit_train=64, limit_test=32)
    torch.manual_seed(0)
    model = odenet.build_view_model("node", data, width=4, field="parabolic", expansion=2.0).double()
    model.eval()
    x, y = data.x_test[:16].double(), data.y_test[:16]

    def grad():
        xa = x.clone().requires_grad_(True)
        with count_nfe(model) as n:
            (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
        return g, n.backward

    g_full, nb_full = grad()
    for p in model.parameters():
        p.requires_grad_(False)
    g_in, nb_in = grad()
    rel = float((g_in - g_full).norm() / g_full.norm())
    assert rel < 1e-3  # rtol 1e-3, atol 1e-4 of the node view
    assert nb_in <= nb_full
