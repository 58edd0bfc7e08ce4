"""Tests of odenet.ODEBlock: ResNet exactness, solver swapping, closed forms, gradients, errors."""

import pytest
import torch
from torch import nn

import solvers
from odenet import LayerwiseField, MLPField, ODEBlock

HAS_IMPLICIT = "implicit_euler" in solvers.METHODS
HAS_ADJOINT = "adjoint" in solvers.GRADIENT_MODES
needs_implicit = pytest.mark.skipif(not HAS_IMPLICIT, reason="solvers has no implicit_euler yet")
needs_adjoint = pytest.mark.skipif(not HAS_ADJOINT, reason="solvers has no adjoint gradient mode yet")


def _resnet_blocks(n, dim, dtype):
    return [nn.Sequential(nn.Linear(dim, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim)).to(dtype) for _ in range(n)]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_euler_layerwise_block_is_exactly_the_resnet(dtype, tol):
    """The issue's exactness test: forward and every gradient, hand-written loop as reference."""
    torch.manual_seed(0)
    L = 6
    blocks = _resnet_blocks(L, 5, dtype)
    block = ODEBlock(LayerwiseField(blocks, t1=L), method="euler", steps=L)
    x = torch.randn(7, 5, dtype=dtype, requires_grad=True)
    y = block(x)
    ref = x
    for b in blocks:
        ref = ref + b(ref)
    assert y.dtype == dtype and y.shape == x.shape
    assert (y - ref).abs().max() <= tol
    w = torch.randn_like(y)  # a generic cotangent
    params = [x] + [p for b in blocks for p in b.parameters()]
    g_block = torch.autograd.grad((y * w).sum(), params)
    g_ref = torch.autograd.grad((ref * w).sum(), params)
    for a, b in zip(g_block, g_ref):
        assert (a - b).abs().max() <= tol * max(1.0, float(b.abs().max()))
    assert block.last_stats.n_f_evals == L and block.nfe_forward == L


def test_euler_layerwise_with_substeps_is_resnet_with_halved_residuals():
    torch.manual_seed(1)
    blocks = _resnet_blocks(3, 4, torch.float64)
    block = ODEBlock(LayerwiseField(blocks, t1=3.0), method="euler", steps=6)
    x = torch.randn(2, 4, dtype=torch.float64)
    ref = x
    for b in blocks:
        for _ in range(2):
            ref = ref + 0.5 * b(ref)
    assert torch.allclose(block(x), ref, atol=1e-13, rtol=0)


def _linear_layerwise(dim=3, n=3, t1=1.5):
    torch.manual_seed(3)
    blocks = [nn.Linear(dim, dim, bias=False).double() for _ in range(n)]
    with torch.no_grad():
        for b in blocks:
            b.weight.mul_(0.8)
    return blocks, LayerwiseField(blocks, t1=t1)


@pytest.mark.parametrize("method, steps, tol", [("dopri5", None, 1e-8), ("rk4", 30, 1e-7), ("tsit5", None, 1e-8)])
def test_layerwise_field_is_solved_interval_by_interval(method, steps, tol):
    """A piecewise-linear field: exact solution is a product of matrix exponentials."""
    blocks, field = _linear_layerwise()
    block = ODEBlock(field, method=method, steps=steps, rtol=1e-10, atol=1e-12)
    x = torch.randn(4, 3, dtype=torch.float64)
    h = field.t1 / len(blocks)
    want = x.T
    for b in blocks:
        want = torch.linalg.matrix_exp(h * b.weight.detach()) @ want
    assert torch.allclose(block(x), want.T, atol=tol, rtol=0)


def _smooth_block(**cfg):
    torch.manual_seed(4)
    return ODEBlock(MLPField(3, hidden=16, time="concat"), **cfg)


def test_swapping_solver_changes_output_only_by_the_discretisation():
    block = _smooth_block(method="euler", steps=4)
    x = torch.randn(8, 3)
    weights = {k: v.clone() for k, v in block.state_dict().items()}
    coarse = block(x)
    block.configure(method="dopri5", rtol=1e-7, atol=1e-9)
    exact = block(x)
    block.configure(method="euler", steps=2000)
    fine = block(x)
    block.configure(method="rk4", steps=20)
    rk4 = block(x)
    assert (fine - exact).abs().max() < 2e-3  # Euler converges to the Neural ODE ...
    assert (rk4 - exact).abs().max() < 1e-5
    assert (coarse - exact).abs().max() > 10 * (fine - exact).abs().max()  # ... at first order
    assert all(torch.equal(v, block.state_dict()[k]) for k, v in weights.items())  # weights untouched


def test_configure_using_and_solver_config():
    block = _smooth_block(method="euler", steps=4)
    before = block.solver_config()
    assert before == dict(method="euler", t1=1.0, steps=4, rtol=1e-3, atol=1e-4, gradient="direct", options=None)
    x = torch.randn(2, 3)
    with block.using(method="rk4", steps=8) as b:
        assert b is block and block.solver_config()["method"] == "rk4"
        block(x)
        assert block.nfe_forward == 32
    assert block.solver_config() == before
    with pytest.raises(RuntimeError, match="boom"):
        with block.using(method="dopri5"):
            raise RuntimeError("boom")
    assert block.solver_config() == before
    assert block.configure(method="dopri5") is block
    assert block.solver_config()["steps"] == 4  # kept for switching back
    cfg = block.solver_config()
    cfg["method"] = "euler"  # a copy: the block is unaffected
    assert block.solver_config()["method"] == "dopri5"
    assert "method='dopri5'" in repr(block)


def test_stats_and_nfe_helpers():
    block = _smooth_block(method="dopri5", rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError, match="no forward pass"):
        block.nfe_forward
    x = torch.randn(5, 3, requires_grad=True)
    y = block(x)
    st = block.last_stats
    assert isinstance(st, solvers.Stats) and st.n_accepted > 0
    assert block.nfe_forward == st.n_f_evals > 6
    assert block.nfe_backward == 0
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_gradcheck_euler_and_dopri5():
    torch.manual_seed(5)
    field = MLPField(2, hidden=3, time="concat").double()
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    params = list(field.parameters())
    for cfg in (dict(method="euler", steps=3), dict(method="dopri5", rtol=1e-9, atol=1e-11)):
        block = ODEBlock(field, **cfg)

        names = [n for n, _ in block.named_parameters()]

        def fn(xx, *ps):
            return torch.func.functional_call(block, dict(zip(names, ps)), (xx,))

        assert torch.autograd.gradcheck(fn, (x, *[p.detach().requires_grad_() for p in params]), atol=1e-6)


@needs_adjoint
def test_adjoint_gradients_match_direct():
    block = _smooth_block(method="dopri5", rtol=1e-8, atol=1e-10).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    params = [x] + list(block.parameters())
    g_direct = torch.autograd.grad(block(x).pow(2).sum(), params)
    block.configure(gradient="adjoint")
    y = block(x)
    g_adj = torch.autograd.grad(y.pow(2).sum(), params)
    for a, b in zip(g_adj, g_direct):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert block.nfe_backward > 0


@needs_implicit
@pytest.mark.parametrize("root_finder", ["anderson", "newton"])
def test_implicit_euler_on_linear_field_matches_closed_form(root_finder):
    torch.manual_seed(6)
    lin = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(-torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(3, 3, dtype=torch.float64))
    block = ODEBlock(LayerwiseField([lin], t1=1.0), method="implicit_euler", steps=4,
                     rtol=1e-10, atol=1e-12, options=dict(root_finder=root_finder))
    x = torch.randn(2, 3, dtype=torch.float64)
    step = torch.linalg.inv(torch.eye(3, dtype=torch.float64) - 0.25 * lin.weight.detach())
    want = x.T
    for _ in range(4):
        want = step @ want
    assert torch.allclose(block(x), want.T, atol=1e-8, rtol=0)


def test_bad_input_errors():
    field = MLPField(4)
    with pytest.raises(ValueError, match="unknown method 'rk45'; valid methods: .*dopri5"):
        ODEBlock(field, method="rk45")
    with pytest.raises(ValueError, match="takes fixed steps: give `steps`"):
        ODEBlock(field, method="euler")
    with pytest.raises(ValueError, match="steps"):
        ODEBlock(field, method="euler", steps=0)
    with pytest.raises(ValueError, match="either `steps` or"):
        ODEBlock(field, method="euler", steps=2, options=dict(step_size=0.1))
    with pytest.raises(ValueError, match="unknown gradient mode 'magic'"):
        ODEBlock(field, gradient="magic")
    with pytest.raises(ValueError, match="rtol"):
        ODEBlock(field, rtol=-1.0)
    with pytest.raises(TypeError, match="unknown solver setting"):
        ODEBlock(field).configure(step=3)
    with pytest.raises(TypeError, match="nn.Module"):
        ODEBlock(lambda t, x: x)
    with pytest.raises(ValueError, match="must equal the LayerwiseField's t1"):
        ODEBlock(LayerwiseField([nn.Linear(2, 2)], t1=2.0), method="euler", steps=2, t1=1.0)
    block = ODEBlock(field, method="euler", steps=2)
    with pytest.raises(ValueError, match=r"expects a state of shape \[\.\.\., 4\].*\(3, 2\)"):
        block(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="floating-point"):
        block(torch.zeros(3, 4, dtype=torch.long))
    # a failed configure leaves the block as it was
    with pytest.raises(ValueError, match=r"`rtol` must be a positive finite number, got 0\.0"):
        block.configure(method="dopri5", rtol=0.0)
    assert block.solver_config()["method"] == "euler"


def test_numerical_failure_raises_solver_error():
    class Blowup(nn.Module):
        def forward(self, t, x):
            return x * x * 1e3

    block = ODEBlock(Blowup(), method="euler", steps=50)
    with pytest.raises(solvers.NonFiniteStateError, match="non-finite"):
        block(torch.full((2, 2), 10.0))
    # x' = 1e3 x^2 from 10 blows up at t = 1e-4: dopri5's step size collapses there
    with pytest.raises(solvers.StepSizeUnderflowError, match=r"stiff .* or singular near this time") as info:
        block.configure(method="dopri5", options=dict(max_num_steps=500))(torch.full((2, 2), 10.0))
    assert abs(info.value.t - 1e-4) < 1e-6  # measured 9.99966e-05
    x = torch.zeros(2, 2)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        ODEBlock(MLPField(2), method="euler", steps=2)(x)
    big = torch.full((4,), 3e38)  # the sum overflows, every element is finite: no error
    lin = nn.Linear(4, 4, bias=False)
    nn.init.zeros_(lin.weight)
    assert torch.equal(ODEBlock(LayerwiseField([lin]), method="euler", steps=1)(big), big)


def test_spectral_norm_field_is_frozen_during_a_solve_and_still_trains():
    torch.manual_seed(7)
    field = MLPField(3, hidden=8, spectral_norm=True)
    seen = []
    field.linears[0].register_forward_hook(lambda mod, args, out: seen.append(mod.weight.detach().clone()))
    block = ODEBlock(field, method="rk4", steps=3).train()
    x = torch.randn(4, 3)
    y = block(x)
    assert len(seen) == 12 and all(torch.equal(w, seen[0]) for w in seen)  # one weight per forward
    y.pow(2).sum().backward()
    w_orig = field.linears[0].parametrizations.weight.original
    assert w_orig.grad is not None and w_orig.grad.abs().sum() > 0
