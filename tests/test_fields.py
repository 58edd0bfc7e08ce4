"""Tests of odenet's vector fields: shapes, time conditioning, spectral norm, LayerwiseField."""

import math

import pytest
import torch
from torch import nn

from odenet import ConvField, LayerwiseField, MLPField, spectral_normalize


def _t(v=0.3):
    return torch.tensor(v, dtype=torch.float64)


@pytest.mark.parametrize("time", ["none", "concat", "film"])
def test_mlp_field_shapes_and_time_dependence(time):
    torch.manual_seed(0)
    f = MLPField(3, hidden=8, depth=2, time=time)
    x = torch.randn(5, 3)
    out = f(_t(0.1), x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert f(_t(0.1), torch.randn(2, 4, 3)).shape == (2, 4, 3)  # any leading dims
    if time == "film":  # zero-initialised FiLM: time-independent until trained
        assert torch.equal(f(_t(0.1), x), f(_t(0.9), x))
        with torch.no_grad():
            for film in f.films:
                film.proj.weight.normal_()
    differs = not torch.allclose(f(_t(0.1), x), f(_t(0.9), x))
    assert differs == (time != "none")


def test_mlp_field_matches_hand_written_network():
    torch.manual_seed(1)
    f = MLPField(2, hidden=5, depth=2, activation="relu", time="concat")
    x = torch.randn(4, 2)
    t = 0.7
    h = x
    for i, lin in enumerate(f.linears):
        h = lin(torch.cat([h, torch.full((4, 1), t)], dim=1))
        if i < 2:
            h = torch.relu(h)
    assert torch.allclose(f(_t(t), x), h, atol=1e-6)


def test_film_is_affine_modulation():
    torch.manual_seed(2)
    f = MLPField(2, hidden=4, depth=1, time="film")
    with torch.no_grad():
        f.films[0].proj.weight.copy_(torch.arange(8.0).reshape(8, 1) / 10)
        f.films[0].proj.bias.copy_(torch.linspace(-1, 1, 8))
    x = torch.randn(3, 2)
    t = 0.5
    gb = f.films[0].proj.weight[:, 0] * t + f.films[0].proj.bias
    h = f.linears[0](x) * (1 + gb[:4]) + gb[4:]
    want = f.linears[1](torch.tanh(h))
    assert torch.allclose(f(_t(t), x), want, atol=1e-6)


@pytest.mark.parametrize("time", ["none", "concat", "film"])
@pytest.mark.parametrize("groups", [None, 2])
def test_conv_field_shapes(time, groups):
    torch.manual_seed(0)
    f = ConvField(4, hidden=6, time=time, groups=groups)
    x = torch.randn(2, 4, 5, 7)
    assert f(_t(), x).shape == x.shape


def test_conv_field_concat_sees_time():
    torch.manual_seed(0)
    f = ConvField(2, time="concat")
    x = torch.randn(1, 2, 4, 4)
    assert not torch.allclose(f(_t(0.0), x), f(_t(1.0), x))


def test_fields_double_precision_gradcheck():
    torch.manual_seed(0)
    for f, shape in ((MLPField(2, hidden=3, time="film"), (2, 2)), (ConvField(1, hidden=2, time="concat"), (1, 1, 3, 3))):
        f = f.double()
        with torch.no_grad():  # non-trivial FiLM so that its path is exercised
            for m in f.modules():
                if hasattr(m, "proj"):
                    m.proj.weight.normal_()
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda tt, xx: f(tt, xx), (t, x))


def test_shape_errors_name_expected_and_actual():
    with pytest.raises(ValueError, match=r"MLPField\(dim=4\) expects .*\[\.\.\., 4\].*\(5, 3\)"):
        MLPField(4)(_t(), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"ConvField\(channels=1\) expects .*\[B, 1, H, W\].*\(2, 3, 8, 8\)"):
        ConvField(1)(_t(), torch.zeros(2, 3, 8, 8))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(dim=0), ValueError, "dim"),
    (dict(dim=2.5), TypeError, "dim"),
    (dict(dim=2, activation="swish"), ValueError, "activation"),
    (dict(dim=2, time="sin"), ValueError, "time"),
])
def test_mlp_field_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MLPField(**kwargs)


def test_conv_field_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        ConvField(2, kernel_size=4)
    with pytest.raises(ValueError, match="divide"):
        ConvField(2, hidden=6, groups=4)


def _power_iteration_norm(fn, shape, iters=200):
    """Largest singular value of the linear map ``fn`` (by power iteration on fn^T fn)."""
    v = torch.randn(shape, dtype=torch.float64)
    for _ in range(iters):
        v = v / v.norm()
        x = v.clone().requires_grad_(True)
        y = fn(x)
        (g,) = torch.autograd.grad(y, x, y)  # J^T J v
        v = g
    v = v / v.norm()
    with torch.no_grad():
        return float(fn(v).norm())


def test_spectral_norm_bounds_lipschitz_constant():
    torch.manual_seed(0)
    f = MLPField(6, hidden=16, depth=2, spectral_norm=True).double()
    with torch.no_grad():  # converge the power iterations of the parametrisation
        for _ in range(50):
            f(_t(), torch.randn(4, 6, dtype=torch.float64))
    f.eval()
    for lin in f.linears:
        w = lin.weight.detach()
        assert float(torch.linalg.matrix_norm(w, ord=2)) == pytest.approx(1.0, abs=1e-3)
    # the whole field is 1-Lipschitz: the Jacobian's spectral norm at random points is <= 1
    for _ in range(3):
        x0 = torch.randn(6, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda x: f(_t(), x), x0)
        assert torch.linalg.matrix_norm(jac, ord=2) <= 1.0 + 1e-3
    # the unnormalised field is far from 1-Lipschitz at this scale
    g = MLPField(6, hidden=16, depth=2).double()
    with torch.no_grad():
        for lin in g.linears:
            lin.weight.mul_(5)
    jac = torch.autograd.functional.jacobian(lambda x: g(_t(), x), torch.zeros(6, dtype=torch.float64))
    assert torch.linalg.matrix_norm(jac, ord=2) > 2.0


def test_spectral_norm_conv_bounded_by_kernel_size():
    torch.manual_seed(0)
    f = ConvField(2, hidden=4, kernel_size=3, spectral_norm=True).double()
    with torch.no_grad():
        for _ in range(50):
            f(_t(), torch.randn(1, 2, 6, 6, dtype=torch.float64))
    f.eval()
    for conv in (f.conv1.conv, f.conv2.conv):
        weight = conv.weight.detach()
        # what spectral normalisation sets: the kernel reshaped to (out, in*k*k) has norm 1
        # (measured 1 - 1e-16 after 50 power iterations; without it: 0.72 and 0.67)
        assert abs(float(torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2)) - 1.0) <= 1e-6
        op = lambda x: nn.functional.conv2d(x, weight, None, padding=1)  # noqa: E731
        sigma = _power_iteration_norm(op, (1, weight.shape[1], 6, 6))
        assert sigma <= 3.0 + 1e-6  # Gouk et al.: ||conv|| <= k * ||reshaped kernel|| = 3 (measured 1.63, 1.24)


def test_spectral_normalize_skips_film_and_is_idempotent():
    f = MLPField(2, hidden=4, time="film")
    spectral_normalize(f)
    spectral_normalize(f)
    from torch.nn.utils import parametrize

    assert all(parametrize.is_parametrized(lin, "weight") for lin in f.linears)
    assert not any(parametrize.is_parametrized(film.proj, "weight") for film in f.films)


# ----------------------------------------------------------------------------- LayerwiseField

def _blocks(n, dim=3, dtype=torch.float32):
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(dim, dim), nn.Tanh()).to(dtype) for _ in range(n)]


def test_layerwise_index_and_intervals():
    f = LayerwiseField(_blocks(4), t1=1.0)
    h = 0.25
    # grid times k*h map to block k, even when they round a hair low; t1 maps to the last block
    for k in range(4):
        assert f.index(k * h) == k
        assert f.index(torch.tensor(k * h, dtype=torch.float32)) == k
        assert f.index(math.nextafter(k * h, -1.0) if k else 0.0) == k
        assert f.index(k * h + 0.6 * h) == k
    assert f.index(1.0) == 3
    assert f.index(sum([0.1] * 10)) == 3  # 0.9999999999999999
    assert f.boundaries() == [0.25, 0.5, 0.75]
    assert f.interval(0) == (0.0, 0.25) and f.interval(3) == (0.75, 1.0)
    with pytest.raises(ValueError, match=r"defined on \[0, 1.0\]"):
        f.index(1.5)
    with pytest.raises(IndexError):
        f.interval(4)


def test_layerwise_calls_block_of_the_interval():
    blocks = _blocks(3)
    f = LayerwiseField(blocks, t1=3.0)
    x = torch.randn(2, 3)
    for k, t in enumerate([0.0, 1.5, 2.999]):
        assert torch.equal(f(_t(t), x), blocks[k](x))
        assert torch.equal(f.as_function()(_t(t), x), blocks[k](x))
        assert torch.equal(f.piece(k)(_t(t), x), blocks[k](x))
    assert len(list(f.parameters())) == 6  # pieces are not registered twice


@pytest.mark.parametrize("interpolation", ["constant", "linear"])
def test_layerwise_follows_replaced_and_added_blocks(interpolation):
    """The module call, as_function(), piece() and step_blocks() agree after a block is
    replaced or appended (the pieces are rebuilt, the new block's signature detected)."""
    blocks = _blocks(3)
    f = LayerwiseField(blocks, t1=3.0, interpolation=interpolation)
    x = torch.randn(2, 3)
    f(_t(0.5), x), f.piece(1)  # build and use everything once
    new = nn.Linear(3, 3)
    f.blocks[1] = new
    f.blocks.append(nn.Linear(3, 3))
    f.t1 = 4.0
    for k in range(4):
        want = f.blocks[k](x)
        assert torch.equal(f(_t(k), x), want)
        assert torch.equal(f.as_function()(_t(k), x), want)
        assert torch.equal(f.piece(k)(_t(k), x), want)
    assert f.piece(1)(_t(1.0), x).equal(new(x))
    assert f.takes_time == [False] * 4
    steps = f.step_blocks([_t(k) for k in range(4)])
    assert steps == (None if interpolation == "linear" else tuple(f.blocks))
    assert len(list(f.parameters())) == 8


def test_layerwise_time_taking_blocks():
    fields = [MLPField(2, hidden=4, time="concat") for _ in range(2)]
    f = LayerwiseField(fields, t1=2.0)
    assert f.takes_time == [True, True]
    x = torch.randn(3, 2)
    assert torch.equal(f(_t(1.2), x), fields[1](_t(1.2), x))


def test_layerwise_bad_input():
    with pytest.raises(TypeError, match="sequence of nn.Module"):
        LayerwiseField(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="at least one"):
        LayerwiseField([])
    with pytest.raises(TypeError, match=r"blocks\[1\]"):
        LayerwiseField([nn.Linear(2, 2), "relu"])
    with pytest.raises(ValueError, match="t1"):
        LayerwiseField(_blocks(2), t1=0.0)
