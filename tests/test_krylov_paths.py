"""Newton–Krylov's finite-difference JVPs and the direct GMRES of its transposed (gradient) solve."""
import pytest
import torch

import solvers
from solvers._solution import RootFinderError

D = torch.float64


class Parabolic(torch.nn.Module):
    """f(y) = -K^T tanh(K y + b) + (A - A^T) y: strongly monotone backward Euler, stiff for large K."""

    def __init__(self, n=6, m=10, scale=3.0, dtype=D):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.K = torch.nn.Parameter(scale * torch.randn(m, n, generator=g, dtype=dtype) / n**0.5)
        self.b = torch.nn.Parameter(0.1 * torch.randn(m, generator=g, dtype=dtype))
        self.A = torch.nn.Parameter(0.3 * torch.randn(n, n, generator=g, dtype=dtype))

    def forward(self, t, y):
        return -torch.tanh(y @ self.K.T + self.b) @ self.K + y @ (self.A.T - self.A)


def _solve(f, y0, t1=1.0, **opts):
    return solvers.solve(f, y0, torch.tensor([0.0, t1], dtype=y0.dtype), method="implicit_euler",
                         options=dict(step_size=0.25, **opts))


@pytest.mark.parametrize("dtype,tol", [(D, 1e-9), (torch.float32, 2e-4)])
def test_finite_difference_jvp_solves_the_backward_euler_equation(dtype, tol):
    f = Parabolic(dtype=dtype)
    y0 = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)
    rt = dict(root_rtol=1e-10 if dtype == D else 1e-6, root_atol=1e-12 if dtype == D else 1e-7)
    h = 0.25
    with torch.no_grad():
        fd = _solve(f, y0, t1=h, root_finder="newton_krylov", jvp="finite_difference", **rt)
        ad = _solve(f, y0, t1=h, root_finder="newton_krylov", **rt)
        y1 = fd.ys[-1]
        resid = y1 - y0 - h * f(None, y1)  # backward Euler: y1 = y0 + h f(y1)
    assert fd.success and fd.stats.n_jvp_evals > 0
    scale = float(y1.abs().max())
    assert float(resid.abs().max()) <= tol * scale
    assert float((fd.ys[-1] - ad.ys[-1]).abs().max()) <= tol * scale
    # every finite-difference product is one field evaluation, on top of the residuals
    assert fd.stats.n_f_evals >= fd.stats.n_jvp_evals + fd.stats.n_root_iters
    assert ad.stats.n_f_evals < ad.stats.n_jvp_evals


@pytest.mark.parametrize("jvp", ["autograd", "finite_difference"])
def test_ift_gradient_by_direct_gmres_passes_gradcheck(jvp):
    f = Parabolic(n=3, m=4, scale=2.0)
    y0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=D, requires_grad=True)
    K = f.K.detach().clone().requires_grad_(True)
    opts = dict(root_finder="newton_krylov", jvp=jvp, root_rtol=1e-12, root_atol=1e-14)

    def run(y, K):
        g = lambda t, x: -torch.tanh(x @ K.T + f.b) @ K + x @ (f.A.T - f.A)
        return _solve(g, y, **opts).ys[-1]

    # nondet_tol: the forward root is re-solved on every call (to ~1e-14), not bit-identical
    assert torch.autograd.gradcheck(run, (y0, K), eps=1e-6, atol=1e-7, rtol=1e-6, nondet_tol=1e-10)


def test_transposed_solve_is_one_linear_solve_per_stage_and_matches_finite_differences():
    f = Parabolic(n=4, m=6)
    y0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=D, requires_grad=True)
    opts = dict(root_finder="newton_krylov", root_rtol=1e-12, root_atol=1e-14)
    sol = _solve(f, y0, **opts)
    sol.ys[-1].square().sum().backward()
    s = sol.stats
    assert s.n_backward_root_iters == s.n_root_solves == 4
    # central differences of the whole solve, component by component
    fdg = torch.zeros_like(y0)
    with torch.no_grad():
        for idx in torch.cartesian_prod(torch.arange(3), torch.arange(4)):
            e = torch.zeros_like(y0)
            e[idx[0], idx[1]] = 1e-6
            up = _solve(f, y0 + e, **opts).ys[-1].square().sum()
            dn = _solve(f, y0 - e, **opts).ys[-1].square().sum()
            fdg[idx[0], idx[1]] = (up - dn) / 2e-6
    assert torch.allclose(y0.grad, fdg, rtol=1e-6, atol=1e-8)


def test_transposed_solve_that_stalls_raises():
    f = Parabolic(scale=12.0)  # h |J| ~ 30: GMRES needs far more than one product
    y0 = torch.randn(4, 6, generator=torch.Generator().manual_seed(4), dtype=D, requires_grad=True)
    finder = solvers.NewtonKrylov(max_iters=30, restart=20, max_restarts=2)
    sol = _solve(f, y0, root_finder=finder, root_rtol=1e-8, root_atol=1e-10)
    assert sol.success
    finder.restart, finder.max_restarts, finder.max_iters = 1, 1, 1  # the backward solve gets one product
    with pytest.raises(RootFinderError, match="transposed linear solve.*did not reach its tolerance"):
        sol.ys[-1].sum().backward()


def test_bad_jvp_option():
    f = Parabolic()
    y0 = torch.zeros(2, 6, dtype=D)
    with pytest.raises(ValueError, match="`jvp` must be one of"):
        _solve(f, y0, root_finder="newton_krylov", jvp="forward")
    with pytest.raises(ValueError, match="option `jvp` applies to root_finder='newton_krylov'"):
        _solve(f, y0, root_finder="anderson", jvp="finite_difference")
    with pytest.raises(ValueError, match="`jvp`"):
        _solve(f, y0, root_finder=solvers.NewtonKrylov(), jvp="finite_difference")


def test_gmres_on_a_singular_operator_reports_its_residual():
    from solvers._krylov import gmres

    b = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=D)
    x, res = gmres(lambda v: torch.zeros_like(v), b, rtol=1e-8, return_residual=True)
    assert torch.equal(x, torch.zeros_like(b))
    assert torch.allclose(res, torch.linalg.vector_norm(b, dim=1))  # nothing solved: residual |b|
    # a nonsingular operator: solved, residual tiny; the identity breaks down luckily at once
    A = torch.tensor([[2.0, 1.0], [-1.0, 3.0]], dtype=D)
    x, res = gmres(lambda v: v @ A.T, b, rtol=1e-12, return_residual=True)
    assert torch.allclose(x @ A.T, b, atol=1e-12) and bool((res <= 1e-11).all())
    x, res = gmres(lambda v: v, b, rtol=1e-12, return_residual=True)
    assert torch.allclose(x, b) and bool((res <= 1e-12).all())


def test_stalled_transposed_solve_on_a_per_sample_grid_raises_root_finder_error():
    # the stage time is a [B] tensor there; the message must not fail to format it
    f = Parabolic(scale=12.0)
    g = torch.Generator().manual_seed(5)
    y0 = torch.randn(4, 6, generator=g, dtype=D, requires_grad=True)
    t = torch.sort(torch.rand(4, 3, generator=g, dtype=D), dim=1).values
    finder = solvers.NewtonKrylov(max_iters=30, restart=20, max_restarts=2)
    sol = solvers.solve(f, y0, t, method="implicit_euler",
                        options=dict(step_size=0.1, root_finder=finder, root_rtol=1e-8, root_atol=1e-10))
    assert sol.success
    finder.restart, finder.max_restarts, finder.max_iters = 1, 1, 1
    with pytest.raises(RootFinderError, match=r"\(t=\S+ in sample 0 of 4\) did not reach its tolerance"):
        sol.ys[-1].sum().backward()
