"""Dense Newton and Radau factorisations stay correct after ``torch.set_num_threads``.

Threaded MKL ``getrf`` run from several threads at once (PyTorch's batched CPU LU) gives
wrong pivots or a wrong factorisation for large matrices once the thread count has been
set (pytorch/pytorch#142815); a test run that used ``set_num_threads`` earlier made an
implicit-Euler Newton solve raise in ``lu_solve``. These tests set two threads themselves.
"""

import pytest
import torch

import solvers
from solvers._lu import SEQUENTIAL_FROM, lu_factor_ex

D = torch.float64


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("n", [SEQUENTIAL_FROM - 1, 200])
def test_batched_lu_reconstructs_every_matrix(two_threads, n):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, n, n, dtype=D, generator=g)
    lu, piv, info = lu_factor_ex(A)
    assert lu.shape == A.shape and piv.shape == (3, n) and info.tolist() == [0, 0, 0]
    assert bool(((piv >= 1) & (piv <= n)).all())
    P, L, U = torch.lu_unpack(lu, piv)
    assert (P @ L @ U - A).abs().max() <= 1e-12 * A.abs().max() * n


def test_batched_lu_reports_singular_samples(two_threads):
    A = torch.randn(2, 160, 160, dtype=D, generator=torch.Generator().manual_seed(1))
    A[1, :, 7] = 0.0
    _, _, info = lu_factor_ex(A)
    assert info[0] == 0 and info[1] > 0


def test_newton_implicit_euler_on_a_large_linear_system(two_threads):
    """One backward Euler step of y' = M y is (I - h M)^{-1} y0, per sample."""
    n, h = 200, 0.1
    g = torch.Generator().manual_seed(2)
    M = -torch.eye(n, dtype=D) + 0.3 * torch.randn(n, n, dtype=D, generator=g) / n ** 0.5
    y0 = torch.randn(3, n, dtype=D, generator=g)
    sol = solvers.solve(lambda t, y: y @ M.T, y0, torch.tensor([0.0, h], dtype=D),
                        method="implicit_euler", options=dict(root_finder="newton", root_rtol=1e-12, root_atol=1e-14))
    exact = torch.linalg.solve(torch.eye(n, dtype=D) - h * M, y0.T).T  # 2-D: not batched
    assert (sol.ys[-1] - exact).abs().max() <= 1e-10
