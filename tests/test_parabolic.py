"""Parabolic fields: the one-sided Lipschitz bound, and what it buys the implicit view."""

import pytest
import torch

import odenet
from odenet import ODEBlock, ParabolicConvField, ParabolicMLPField
from _checks import big_weights, central_difference


def _big_weights(module, scale=3.0, seed=0):
    return big_weights(module, scale, seed)


def _jacobian(f, x, t=0.3):
    n = x.numel()
    return torch.autograd.functional.jacobian(lambda z: f(t, z), x).reshape(n, n)


FIELDS = [
    ("conv", lambda **kw: ParabolicConvField(3, hidden=5, **kw), (1, 3, 5, 4)),
    ("mlp", lambda **kw: ParabolicMLPField(6, hidden=9, **kw), (1, 6)),
]


@pytest.mark.parametrize("name,make,shape", FIELDS, ids=[f[0] for f in FIELDS])
@pytest.mark.parametrize("skew", [False, True])
@pytest.mark.parametrize("expansion", [0.0, 1.5, -0.7])
@pytest.mark.parametrize("time", ["none", "concat"])
def test_symmetric_part_of_jacobian_is_bounded_by_expansion(float64_default, name, make, shape, skew, expansion, time):
    f = _big_weights(make(skew=skew, expansion=expansion, time=time))
    assert f.one_sided_lipschitz == expansion
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = 0.2 * torch.randn(shape, generator=g)  # tanh not saturated: |J| is large
        J = _jacobian(f, x)
        top = torch.linalg.eigvalsh((J + J.T) / 2).max().item()
        assert top <= expansion + 1e-9
        assert torch.linalg.matrix_norm(J, 2) > 3 * (abs(expansion) + 1)  # large weights: |J| is not bounded


@pytest.mark.parametrize("name,make,shape", FIELDS, ids=[f[0] for f in FIELDS])
def test_gradient_part_has_a_symmetric_jacobian(float64_default, name, make, shape):
    # -K^T act(Kx + b) is a gradient field: its Jacobian is symmetric iff K^T is the exact adjoint
    f = _big_weights(make(skew=False))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    J = _jacobian(f, x)
    torch.testing.assert_close(J, J.T, rtol=0, atol=1e-10)
    if name == "conv":  # and the skew part is exactly antisymmetric
        f2 = _big_weights(make(skew=True))
        with torch.no_grad():
            f2.conv.weight.zero_()
        J2 = _jacobian(f2, x)
        torch.testing.assert_close(J2, -J2.T, rtol=0, atol=1e-10)


def test_backward_euler_solves_at_a_huge_step_where_the_field_is_stiff(float64_default):
    f = _big_weights(ParabolicConvField(2, hidden=3, expansion=0.0), scale=2.0)
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    h = 10.0
    J = _jacobian(f, x0[:1])
    assert h * torch.linalg.matrix_norm(J, 2) > 50  # Picard iteration cannot converge here
    block = ODEBlock(f, method="implicit_euler", t1=h, steps=1,
                     options=dict(root_finder="newton_krylov", root_rtol=1e-10, root_atol=1e-10))
    x1 = block(x0)
    residual = x1 - x0 - h * f(h, x1)
    assert residual.abs().max() < 1e-7 * (1 + x1.abs().max())
    # the backward Euler map contracts (expansion 0): |x1 - y1| <= |x0 - y0|
    y0 = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    y1 = block(y0)
    d0 = (x0 - y0).flatten(1).norm(dim=1)
    d1 = (x1 - y1).flatten(1).norm(dim=1)
    assert (d1 <= d0 * (1 + 1e-8)).all()


def test_implicit_gradients_on_a_parabolic_field_match_finite_differences(float64_default):
    f = _big_weights(ParabolicConvField(2, hidden=2, expansion=1.0, time="concat"), scale=1.0, seed=5)
    block = ODEBlock(f, method="implicit_euler", steps=2,
                     options=dict(root_finder="newton_krylov", root_rtol=1e-12, root_atol=1e-12))
    x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(6), requires_grad=True)
    # the transposed (backward) solve is iterative: repeated backwards agree to its tolerance, not bitwise;
    # fast mode checks a random projection of the Jacobian (2 solves, not 2 per input entry)
    assert torch.autograd.gradcheck(lambda z: block(z), (x,), eps=1e-6, atol=1e-6, nondet_tol=1e-9, fast_mode=True)
    w = f.conv.weight
    loss = lambda: block(x.detach()).square().sum()  # noqa: E731
    g = torch.autograd.grad(loss(), w)[0]
    fd = central_difference(loss, w, (0, 1, 2, 0))
    assert abs(fd - g[0, 1, 2, 0].item()) < 1e-5 * (1 + abs(g[0, 1, 2, 0].item()))


@pytest.mark.parametrize("method,steps,ok", [
    ("implicit_euler", 2, False),  # h * nu = 0.5 * 2 = 1: not guaranteed
    ("implicit_euler", 3, True),
    ("implicit_midpoint", 1, False),  # gamma * h * nu = 0.5 * 1 * 2 = 1
    ("implicit_midpoint", 2, True),
    ("trapezoid", 2, True),
])
def test_block_refuses_implicit_steps_beyond_the_bound(method, steps, ok):
    f = ParabolicConvField(2, expansion=2.0)
    if ok:
        ODEBlock(f, method=method, steps=steps)
    else:
        with pytest.raises(ValueError, match=r"one-sided Lipschitz bound is 2.*steps >= "):
            ODEBlock(f, method=method, steps=steps)
    block = ODEBlock(f, method="euler", steps=1)  # explicit methods have no such limit
    with pytest.raises(ValueError, match="one-sided Lipschitz"):
        block.configure(method="implicit_euler", steps=1)
    assert block.solver_config()["method"] == "euler"  # a refused configuration changes nothing
    ODEBlock(ParabolicConvField(2, expansion=0.0), method="implicit_euler", steps=1, t1=100.0)


def test_layerwise_parabolic_fields_are_checked_per_block():
    blocks = [ParabolicConvField(2, expansion=0.5), ParabolicConvField(2, expansion=3.0)]
    field = odenet.LayerwiseField(blocks, t1=2.0)
    with pytest.raises(ValueError, match="bound is 3"):
        ODEBlock(field, method="implicit_euler", steps=2)
    ODEBlock(field, method="implicit_euler", steps=8)


@pytest.mark.parametrize("kwargs,match", [
    (dict(activation="gelu"), "non-decreasing"),
    (dict(time="film"), "FiLM"),
    (dict(expansion=float("nan")), "expansion"),
    (dict(expansion=True), "expansion"),
    (dict(kernel_size=2), "odd"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParabolicConvField(2, **kwargs)


def test_wrong_state_shapes_are_reported():
    with pytest.raises(ValueError, match=r"ParabolicConvField\(channels=2\)"):
        ParabolicConvField(2)(0.0, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"ParabolicMLPField\(dim=4\)"):
        ParabolicMLPField(4)(0.0, torch.zeros(2, 5))


def test_classifiers_build_parabolic_fields():
    m = odenet.ImageClassifier(width=4, field="parabolic", expansion=1.0, method="implicit_euler", steps=2)
    assert isinstance(m.blocks[0].field, ParabolicConvField)
    assert m.config["field"] == "parabolic" and m.config["expansion"] == 1.0
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    rebuilt = odenet.ImageClassifier(**m.config)
    rebuilt.load_state_dict(m.state_dict())
    mlp = odenet.MLPClassifier(2, 2, hidden=8, depth=1, field="parabolic", method="euler", steps=2)
    assert isinstance(mlp.blocks[0].field, ParabolicMLPField)
    with pytest.raises(ValueError, match="groups"):
        odenet.ImageClassifier(width=4, field="parabolic", groups=2, method="euler", steps=2)
    with pytest.raises(ValueError, match="field"):
        odenet.ImageClassifier(width=4, field="mlp", method="euler", steps=2)
    with pytest.raises(ValueError, match="expansion"):
        odenet.ImageClassifier(width=4, field="conv", expansion=1.0, method="euler", steps=2)
    with pytest.raises(ValueError, match="depth=1"):
        odenet.MLPClassifier(2, 2, field="parabolic", depth=2, method="euler", steps=2)
    with pytest.raises(ValueError, match="one-sided Lipschitz"):  # h * expansion = 1 / 1 * 4
        odenet.ImageClassifier(width=4, field="parabolic", expansion=4.0, method="implicit_euler", steps=1)


def test_views_map_field_families():
    data = odenet.load_dataset("circles", seed=0, limit_train=16, limit_test=8)
    m = odenet.build_view_model("implicit", data, width=8, field="parabolic", expansion=2.0)
    assert isinstance(m.blocks[0].field, ParabolicMLPField)
    m = odenet.build_view_model("resnet", data, width=8, field="unconstrained")
    assert isinstance(m.blocks[0].field, odenet.MLPField)
    with pytest.raises(ValueError, match="unknown field"):
        odenet.train(model="resnet", data="circles", field="smooth", epochs=1, out=None, quiet=True)
