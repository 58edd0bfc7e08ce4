"""LayerwiseField's smoothness options: linear interpolation in time between block weights,
smooth initialisations across depth (Sander et al. 2022) and the depth-smoothness penalty."""

import math

import pytest
import torch
from torch import nn

import odenet
from odenet import LayerwiseField, MLPClassifier, MLPField, ODEBlock, check_solver_robustness


def _mlps(n=4, dim=3, hidden=6, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)).to(dtype) for _ in range(n)]


def _x(b=5, dim=3, seed=1):
    return torch.randn(b, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _t(v):
    return torch.tensor(v, dtype=torch.float64)


# ----------------------------------------------------------------------------- the interpolation

def test_constant_mode_is_bit_identical_to_the_hand_written_resnet():
    blocks = _mlps()
    x = _x()
    for interpolation in ("constant", "linear"):  # both agree at the knots Euler evaluates
        y = ODEBlock(LayerwiseField(blocks, t1=1.0, interpolation=interpolation), method="euler", steps=4)(x)
        h = x
        for b in blocks:
            h = h + 0.25 * b(h)
        assert torch.equal(y, h)
    f = LayerwiseField(blocks, t1=2.0)
    for k in range(4):  # constant mode: block k on the open interval, exactly
        assert torch.equal(f(_t(0.5 * k + 0.3), x), blocks[k](x))


def test_linear_interpolation_is_the_lerp_of_the_parameters():
    blocks = _mlps()
    f = LayerwiseField(blocks, t1=1.0, interpolation="linear")
    x, w = _x(), 0.3
    mixed = _mlps(1, seed=5)[0]
    with torch.no_grad():
        for p, a, b in zip(mixed.parameters(), blocks[1].parameters(), blocks[2].parameters()):
            p.copy_((1 - w) * a + w * b)
    assert torch.allclose(f(_t(0.25 + w * 0.25), x), mixed(x), rtol=0, atol=1e-15)
    assert torch.equal(f(_t(0.9), x), blocks[3](x))  # the last interval is block L-1 alone


def test_linear_field_is_continuous_at_block_boundaries_and_constant_is_not():
    blocks = _mlps()
    x = _x()
    lin = LayerwiseField(blocks, t1=1.0, interpolation="linear")
    const = LayerwiseField(blocks, t1=1.0)
    for b in lin.boundaries():
        k = lin.index(b)
        torch.set_grad_enabled(False)
        # the two intervals' own formulas agree at the shared end
        assert torch.allclose(lin.piece(k - 1)(_t(b), x), lin.piece(k)(_t(b), x), rtol=0, atol=1e-15)
        jumps = [float((lin(_t(b + d), x) - lin(_t(b - d), x)).abs().max()) for d in (1e-2, 1e-3, 1e-4)]
        assert jumps[0] / jumps[1] == pytest.approx(10, rel=0.05)  # Lipschitz in t: the jump is O(delta)
        assert jumps[1] / jumps[2] == pytest.approx(10, rel=0.05)
        assert float((const(_t(b + 1e-4), x) - const(_t(b - 1e-4), x)).abs().max()) > 100 * jumps[2]
        torch.set_grad_enabled(True)


def _errors(field, x, method, ns, ref):
    return [float((ODEBlock(field, method=method, steps=n)(x) - ref).abs().max()) for n in ns]


def test_rk4_and_midpoint_converge_with_their_own_order_on_the_linear_field():
    field = LayerwiseField(_mlps(seed=2), t1=1.0, interpolation="linear")
    x = _x()
    with torch.no_grad():
        ref = ODEBlock(field, method="rk4", steps=1024)(x)
        rk4 = _errors(field, x, "rk4", (8, 16, 32, 64), ref)
        mid = _errors(field, x, "midpoint", (8, 16, 32, 64), ref)
        unaligned = _errors(field, x, "rk4", (10, 20, 40), ref)  # steps not a multiple of L
    for a, b in zip(rk4[:-1], rk4[1:]):
        assert 13 < a / b < 19  # 2^4 per halving
    for a, b in zip(mid[:-1], mid[1:]):
        assert 3.6 < a / b < 4.4
    for a, b in zip(unaligned[:-1], unaligned[1:]):
        assert 13 < a / b < 23


def test_dopri5_and_implicit_euler_converge_on_the_linear_field():
    field = LayerwiseField(_mlps(seed=2), t1=1.0, interpolation="linear")
    x = _x()
    with torch.no_grad():
        ref = ODEBlock(field, method="rk4", steps=1024)(x)
        dp = [float((ODEBlock(field, method="dopri5", rtol=tol, atol=tol)(x) - ref).abs().max())
              for tol in (1e-4, 1e-6, 1e-8)]
        ie = [float((ODEBlock(field, method="implicit_euler", steps=n,
                              options=dict(root_rtol=1e-12, root_atol=1e-12))(x) - ref).abs().max())
              for n in (16, 32, 64)]
    assert dp[2] < 1e-6 and dp[1] < 1e-4 and dp[0] > dp[1] > dp[2]
    for a, b in zip(ie[:-1], ie[1:]):
        assert 1.8 < a / b < 2.2


def test_gradients_reach_every_block_gradcheck():
    blocks = _mlps(n=3, dim=2, hidden=3, seed=4)
    field = LayerwiseField(blocks, t1=1.0, interpolation="linear")
    x = _x(b=2, dim=2)
    params = [p for b in blocks for p in b.parameters()]
    names = [n for n, _ in blocks[0].named_parameters()]

    def run(*ps):
        # the interpolated parameters as explicit inputs of the solve (block i's j-th tensor)
        state = {f"field.blocks.{i}.{names[j]}": ps[i * len(names) + j] for i in range(3) for j in range(len(names))}
        block = ODEBlock(field, method="rk4", steps=6)
        return torch.func.functional_call(block, state, (x,))

    assert torch.autograd.gradcheck(run, tuple(p.detach().clone().requires_grad_() for p in params))
    y = ODEBlock(field, method="dopri5", rtol=1e-6, atol=1e-8)(x)
    grads = torch.autograd.grad(y.sum(), params)
    for i in range(3):
        assert float(grads[i * len(names)].abs().sum()) > 0  # every block's first weight gets a gradient


def test_linear_interpolation_needs_identical_unparametrised_blocks():
    with pytest.raises(ValueError, match=r"identical architecture.*blocks\[1\].*is a Sequential"):
        LayerwiseField([nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3))], interpolation="linear")
    with pytest.raises(ValueError, match=r"identical architecture.*blocks\[1\].*'weight' has shape"):
        LayerwiseField([nn.Linear(3, 3), nn.Linear(4, 3)], interpolation="linear")
    with pytest.raises(ValueError, match=r"identical architecture.*blocks\[1\]"):
        LayerwiseField([MLPField(3, activation="tanh"), MLPField(3, activation="relu")], interpolation="linear")
    with pytest.raises(ValueError, match="parametrised"):
        LayerwiseField([MLPField(3, spectral_norm=True) for _ in range(2)], interpolation="linear")
    with pytest.raises(ValueError, match="`interpolation` must be one of"):
        LayerwiseField([nn.Linear(3, 3)], interpolation="cubic")
    with pytest.raises(ValueError, match="`init` must be None or one of"):
        LayerwiseField([nn.Linear(3, 3)], init="random")
    with pytest.raises(ValueError, match="per-sample"):
        LayerwiseField(_mlps(2), interpolation="linear")(torch.full((5,), 0.2, dtype=torch.float64), _x())
    with pytest.raises(ValueError, match="apply to layerwise fields only"):
        MLPClassifier(4, 3, layers=1, interpolation="linear", method="euler", steps=4)


# ----------------------------------------------------------------------------- init and penalty

def test_smooth_and_tied_initialisations():
    blocks = _mlps(n=5, seed=3)
    a = [p.detach().clone() for p in blocks[0].parameters()]
    b = [p.detach().clone() for p in blocks[-1].parameters()]
    f = LayerwiseField(blocks, init="smooth")
    for k, blk in enumerate(f.blocks):
        s = k / 4
        for p, pa, pb in zip(blk.parameters(), a, b):
            ma, mb = pa.mean(), pb.mean()
            want = (1 - s) * ma + s * mb + math.cos(math.pi * s / 2) * (pa - ma) + math.sin(math.pi * s / 2) * (pb - mb)
            assert torch.allclose(p, want, rtol=0, atol=1e-15)
    # a constant-initialised tensor stays constant; the random ones keep their spread
    norm = LayerwiseField([nn.Sequential(nn.Linear(3, 64), nn.LayerNorm(64)).double() for _ in range(5)],
                          init="smooth")
    assert all(torch.equal(blk[1].weight, torch.ones(64, dtype=torch.float64)) for blk in norm.blocks)
    stds = [float(blk[0].weight.detach().std()) for blk in norm.blocks]
    assert max(stds) / min(stds) < 1.25  # each 64x3 weight: ~9 % sampling error of the std
    tied = LayerwiseField(_mlps(n=3, seed=3), init="tied")
    assert all(torch.equal(p, q) for blk in tied.blocks for p, q in zip(blk.parameters(), tied.blocks[0].parameters()))
    assert float(tied.smoothness_penalty().detach()) == 0.0
    # the smooth init's penalty stays bounded as L grows; independent blocks' grows like L
    with torch.no_grad():
        pens = {n: (float(LayerwiseField(_mlps(n, seed=3), init="smooth").smoothness_penalty()),
                    float(LayerwiseField(_mlps(n, seed=3)).smoothness_penalty())) for n in (4, 16, 64)}
    assert pens[64][0] < 1.2 * pens[16][0] < 1.5 * pens[4][0]
    assert pens[64][1] > 10 * pens[4][1]


def test_smoothness_penalty_is_the_hand_computed_h1_seminorm():
    blocks = _mlps(n=3, seed=6)
    f = LayerwiseField(blocks, t1=1.5)
    h = 0.5
    want = 0.0
    for k in range(2):
        for p, q in zip(blocks[k].parameters(), blocks[k + 1].parameters()):
            want += float(((q - p) ** 2).sum().detach()) / h
    got = f.smoothness_penalty()
    assert float(got.detach()) == pytest.approx(want, rel=1e-13)
    grads = torch.autograd.grad(got, list(blocks[1].parameters()))
    for g, l, p, r in zip(grads, *(list(blocks[i].parameters()) for i in range(3))):
        assert torch.allclose(g, 2 * (2 * p - l - r) / h)  # d/dtheta_1 of |t1-t0|^2/h + |t2-t1|^2/h
    assert float(LayerwiseField(_mlps(1)).smoothness_penalty().detach()) == 0.0
    with pytest.raises(ValueError, match="smoothness_penalty.*identical architecture"):
        LayerwiseField([nn.Linear(3, 3), nn.Linear(3, 4)]).smoothness_penalty()


def test_regularizer_adds_the_smoothness_term_and_refuses_other_fields():
    torch.manual_seed(0)
    m = MLPClassifier(4, 3, hidden=6, depth=1, layers=3, method="euler", steps=3).train()
    reg = odenet.DynamicsRegularizer(m, smoothness=0.5)
    assert not reg._handles  # no records of the solve needed
    m(torch.randn(4, 4))
    want = 0.5 * float(m.ode_blocks()[0].field.smoothness_penalty().detach())
    assert float(reg.value().detach()) == pytest.approx(want, rel=1e-12)
    assert reg.last["smoothness"] == pytest.approx(want / 0.5, rel=1e-12)
    with pytest.raises(ValueError, match="not supported there"):  # a hook would record nothing: refused
        odenet.DynamicsRegularizer(m, kinetic=0.1, smoothness=0.5)
    with pytest.raises(ValueError, match="LayerwiseField.*layers > 1"):
        odenet.DynamicsRegularizer(MLPClassifier(4, 3, method="euler", steps=3), smoothness=1.0)
    with pytest.raises(ValueError, match="`smoothness` must be a non-negative"):
        odenet.DynamicsRegularizer(m, smoothness=-1.0)


def test_train_cli_smoothness_flag(tmp_path, capsys):
    from odenet.cli import main

    args = ["train", "--data", "circles", "--epochs", "1", "--width", "6", "--limit-train", "32",
            "--limit-test", "16", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a"), "--layers", "4", "--interpolation", "linear",
                        "--layer-init", "smooth", "--smoothness", "0.1"]) == 0
    model = odenet.load_model(tmp_path / "a" / "checkpoint.pt")
    field = model.ode_blocks()[0].field
    assert isinstance(field, LayerwiseField) and len(field) == 4 and field.interpolation == "linear"
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "b"), "--smoothness", "0.1"]) == 2
    assert "--layers" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the diagnostic's verdict

def _layerwise_model(seed, scale, **field_kw):
    torch.manual_seed(seed)
    m = MLPClassifier(in_features=4, num_classes=3, hidden=8, depth=1, layers=4, method="euler", steps=4,
                      **field_kw)
    with torch.no_grad():
        for p in m.ode_blocks()[0].field.parameters():
            p.mul_(scale)
    return m


def test_diagnostic_random_constant_blocks_are_discrete_smooth_linear_blocks_are_an_ode():
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    rough = check_solver_robustness(_layerwise_model(3, 6.0), x, steps=(4, 8, 16))
    assert not rough.is_ode and rough.verdict == "this model is a discrete ResNet"
    smooth = check_solver_robustness(_layerwise_model(3, 1.0, interpolation="linear", layer_init="smooth"), x)
    assert smooth.is_ode and smooth.verdict == "this model is an ODE"
    assert abs(smooth.orders["euler"] - 1.0) < 0.15
    assert smooth.orders["rk4"] > 3.0
