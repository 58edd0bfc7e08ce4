"""Regression tests for root-finder failures found with bad input and hard problems
(issue 10): no SUCCESS without a root, singular Newton matrices, half precision, empty
states, the memory rule of ``root_finder="auto"`` and the failure hint."""

import re

import pytest
import torch

import solvers
from solvers._ift import StageEquation
from solvers._implicit import auto_root_finder
from solvers._root import BatchView, Tolerance, get_root_finder
from solvers._solution import Stats

D = torch.float64
FINDERS = ["fixed_point", "anderson", "newton", "newton_krylov"]
T01 = torch.tensor([0.0, 1.0], dtype=D)


def _eq(f, c):
    view = BatchView(c)
    return StageEquation(lambda t, y: f(y), torch.tensor(0.0, dtype=D), c, 1.0, view), view


@pytest.mark.parametrize("name", FINDERS)
def test_no_root_is_never_success(name):
    # y' = y, backward Euler with h = 1: y1 = y0 + y1 has no solution (I - hJ = 0)
    sol = solvers.solve(lambda t, y: y, torch.ones(1, dtype=D), T01, method="implicit_euler",
                        options=dict(step_size=1.0, root_finder=name), raise_on_failure=False)
    assert sol.status is solvers.Status.ROOT_FINDER and sol.ys.shape[0] == 1
    with pytest.raises(solvers.RootFinderError) as e:
        solvers.solve(lambda t, y: y, torch.ones(1, dtype=D), T01, method="implicit_euler",
                      options=dict(step_size=1.0, root_finder=name))
    hint = re.search(r"hint=(.*)", str(e.value)).group(1)
    assert f"'{name}'" not in hint and "root_finder=" in hint  # names another finder


def test_newton_krylov_success_means_small_residual():
    # x = c + h tanh(W x) with a random W: on return the true residual is within tolerance
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 6, generator=g, dtype=D)
    c = torch.randn(4, 6, generator=g, dtype=D)
    eq, view = _eq(lambda y: 2.0 * torch.tanh(y @ W.T), c)
    tol = Tolerance(1e-8, 1e-10)
    res = get_root_finder("newton_krylov").solve(eq, view.flat(c), tol, Stats())
    assert res.ok
    r = eq.G(res.x) - res.x
    scaled = torch.sqrt(torch.mean((r / tol.scale(res.x)) ** 2, dim=1))
    assert float(scaled.max()) <= 1.0


def test_singular_newton_matrix_fails_per_sample_by_name():
    # x = a x + 1 per sample: a = 1 has a singular Newton matrix, the others a unique root
    a = torch.tensor([[0.5], [1.0], [2.0]], dtype=D)
    eq, view = _eq(lambda y: a * y + 1.0, torch.zeros(3, 1, dtype=D))
    res = get_root_finder("newton").solve(eq, torch.zeros(3, 1, dtype=D), Tolerance(1e-10, 1e-12), Stats())
    assert not res.ok and "singular" in res.reason and "1 of 3" in res.reason
    assert res.converged.tolist() == [True, False, True]
    assert torch.allclose(res.x[[0, 2], 0], torch.tensor([2.0, -1.0], dtype=D), atol=1e-12, rtol=0)
    # the same singular case through Newton-Krylov: no progress, reported as such
    res = get_root_finder("newton_krylov").solve(eq, torch.zeros(3, 1, dtype=D), Tolerance(1e-10, 1e-12), Stats())
    assert not res.ok and "linear solve" in res.reason and res.converged.tolist() == [True, False, True]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("finder", ["newton", "newton_krylov", "anderson"])
@pytest.mark.parametrize("method, r", [("implicit_euler", 1 / 1.1), ("trapezoid", 0.95 / 1.05)])
def test_half_precision_implicit_solves(dtype, finder, method, r):
    # y' = -y, 10 steps of h = 0.1: y_10 = R(-0.1)^10 (closed form of the one-step map)
    y0 = torch.ones(3, 2, dtype=dtype)
    sol = solvers.solve(lambda t, y: -y, y0, T01, method=method, options=dict(step_size=0.1, root_finder=finder))
    assert sol.ys.dtype == dtype
    eps = torch.finfo(dtype).eps
    # 10 steps, each rounding the state and the stage solution: 10 eps relative
    assert float((sol.ys[-1].double() - r**10).abs().max()) <= 10 * eps * r**10


@pytest.mark.parametrize("method", ["implicit_euler", "kvaerno5"])
def test_empty_state(method):
    y0 = torch.ones(0, 3, dtype=D)
    opts = dict(step_size=0.25) if not solvers.METHODS[method].adaptive else {}
    sol = solvers.solve(lambda t, y: -y, y0, T01, method=method, options=opts)
    assert sol.success and sol.ys.shape == (2, 0, 3)


def test_auto_chooses_by_memory():
    assert auto_root_finder(1, 256, 8) == "newton"
    assert auto_root_finder(1024, 2, 8) == "newton"
    assert auto_root_finder(1, 257, 8) == "newton_krylov"  # forming J costs n VJPs: small n only
    # the case: batch 65536 x 256 unknowns, float32 (17 GB per copy)
    assert auto_root_finder(65536, 256, 4) == "newton_krylov"
    assert auto_root_finder(1000, 100, 8) == "newton_krylov"  # 4 * 1000 * 100^2 * 8 B = 320 MB > 256 MiB
    assert auto_root_finder(800, 100, 8) == "newton"  # 256 MB
    assert auto_root_finder(1000, 100, 2) == "newton"  # half precision counts as float32: 160 MB
    m = solvers.METHODS["implicit_euler"]()
    assert m.root_finder_for(torch.empty(2000, 100, dtype=D)).name == "newton_krylov"
    assert m.root_finder_for(torch.empty(20, 100, dtype=D)).name == "newton"



def test_dense_newton_flags_a_non_finite_jacobian_instead_of_factoring_it():
    """A NaN in one sample's Jacobian: that sample is flagged (no Newton step; it fails by
    name) and its factor is the identity's, so lu_solve never sees LAPACK's invalid pivots;
    the other sample's LU is the true one."""
    from solvers._root import Newton, _JacobianState

    J = torch.tensor([[[0.2, 0.1], [0.0, 0.3]], [[float("nan"), 0.0], [0.0, 0.1]]], dtype=torch.float64)
    js = _JacobianState(torch.zeros(2, 2, dtype=torch.float64))
    js.J, js.gamma_j = J, 1.0
    Newton()._factor(js, 1.0)
    assert js.info.tolist()[0] == 0 and js.info.tolist()[1] > 0
    b = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    x = torch.linalg.lu_solve(js.lu[0], js.lu[1], b[:, :, None])[:, :, 0]
    torch.testing.assert_close(x[0], torch.linalg.solve(torch.eye(2, dtype=torch.float64) - J[0], b[0]))
    assert torch.isfinite(x).all()
