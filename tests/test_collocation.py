"""Collocation (gl4, gl6, radauIIA3, radauIIA5) and the SDIRK additions (sdirk2, trbdf2):
tableau properties, stability functions, invariants, root finders, gradients.

Orders are checked by the registry-driven tests (tests/test_convergence.py, gradcheck in
tests/test_gradcheck.py); here the properties that make each method worth having."""

import numpy as np
import pytest
import torch

import solvers

D = torch.float64
IMPLICIT_TABLEAU = sorted(n for n, c in solvers.METHODS.items() if c.implicit and getattr(c, "tableau", None) is not None)
COLLOCATION = ["gl4", "gl6", "radauIIA3", "radauIIA5"]


@pytest.mark.parametrize("name", IMPLICIT_TABLEAU)
def test_declared_order_is_the_tableau_order(name):
    cls = solvers.METHODS[name]
    tab = cls.tableau
    np.testing.assert_allclose(tab.a.sum(axis=1), tab.c, atol=1e-14)
    assert tab.order() == cls.order  # every tree up to the order holds, the next order fails
    if tab.b_error is not None:
        assert tab.order(weights=tab.b - tab.b_error) == cls.error_order


def test_check_order_names_the_failing_order():
    tab = solvers.METHODS["gl4"].tableau
    bad = solvers.ButcherTableau(c=tab.c, a=tab.a + np.array([[1e-3, -1e-3], [-1e-3, 1e-3]]), b=tab.b)
    with pytest.raises(ValueError, match="order-4 conditions fail"):
        bad.check_order(4, "broken gl4")


def _R(tab, z):
    """Stability function 1 + z b^T (I - zA)^-1 1 (complex z)."""
    s = tab.stages
    return 1 + z * tab.b @ np.linalg.solve(np.eye(s) - z * tab.a, np.ones(s))


@pytest.mark.parametrize("name", ["gl4", "gl6"])
def test_gauss_legendre_symplectic_and_unitary(name):
    tab = solvers.METHODS[name].tableau
    b, a = tab.b, tab.a
    M = b[:, None] * a + (b[:, None] * a).T - np.outer(b, b)  # symplecticity condition
    assert np.abs(M).max() < 1e-14
    for y in (0.1, 1.0, 10.0, 1e3):
        assert abs(abs(_R(tab, 1j * y)) - 1) < 1e-12
    assert abs(_R(tab, -1e8) - (-1) ** tab.stages) < 1e-6  # R(-inf) = (-1)^s (diagonal Pade): not L-stable


@pytest.mark.parametrize("name", ["radauIIA3", "radauIIA5", "sdirk2", "trbdf2"])
def test_l_stable(name):
    tab = solvers.METHODS[name].tableau
    x = np.concatenate([-np.logspace(-3, 8, 200)])
    assert all(abs(_R(tab, complex(v, w))) <= 1 + 1e-12 for v in x for w in (0.0, 0.3 * v, 3 * v))  # left half plane
    # R(-inf) = 0: |R(z)| = O(1/|z|) (evaluated where round-off in 1 + z b^T(...) stays below it)
    assert abs(_R(tab, -1e6)) < 1e-5 and abs(_R(tab, -1e7)) < 0.2 * abs(_R(tab, -1e6))
    # the same through a solve: one step of h = 1 on y' = -1e8 y leaves ~ R(-1e8)
    y = solvers.odeint(lambda t, y: -1e8 * y, torch.ones(1, dtype=D), torch.tensor([0.0, 1.0], dtype=D),
                       method=name, rtol=1e3, atol=1e3, options=dict(first_step=1.0, max_step=1.0) if solvers.METHODS[name].adaptive else dict(step_size=1.0))
    assert abs(float(y[-1, 0])) < 1e-6


@pytest.mark.parametrize("name", ["gl4", "gl6"])
def test_norm_preserved_on_skew_system(name):
    g = torch.Generator().manual_seed(0)
    M = torch.randn(6, 6, generator=g, dtype=D)
    S = M - M.T
    y0 = torch.randn(3, 6, generator=g, dtype=D)
    ys = solvers.odeint(lambda t, y: y @ S.T, y0, torch.tensor([0.0, 20.0], dtype=D), method=name,
                        options=dict(step_size=0.5, root_rtol=1e-14, root_atol=1e-16))
    # ||S|| ~ 5: h ||S|| ~ 2.5, far outside any explicit method's comfort; the norm stays
    assert torch.allclose(ys[-1].norm(dim=1), y0.norm(dim=1), rtol=1e-11, atol=0)


@pytest.mark.parametrize("finder", ["newton", "newton_krylov", "anderson"])
@pytest.mark.parametrize("name", COLLOCATION)
def test_root_finders_agree_on_nonlinear_problem(name, finder):
    # pendulum with damping, complex-free; each finder must give the same step to tolerance
    f = lambda t, y: torch.stack([y[..., 1], -torch.sin(y[..., 0]) - 0.1 * y[..., 1]], dim=-1)  # noqa: E731
    y0 = torch.tensor([[1.0, 0.0], [2.0, 0.5]], dtype=D)
    t = torch.tensor([0.0, 2.0], dtype=D)
    opts = dict(step_size=0.1, root_rtol=1e-13, root_atol=1e-15)
    ref = solvers.odeint(f, y0, t, method=name, options=dict(opts, root_finder="newton"))
    ys = solvers.odeint(f, y0, t, method=name, options=dict(opts, root_finder=finder))
    assert torch.allclose(ys, ref, rtol=0, atol=1e-11)
    # against scipy (DOP853 at rtol 1e-12): the method's own error at h = 0.1
    from scipy.integrate import solve_ivp

    for i in range(2):
        s = solve_ivp(lambda t, y: [y[1], -np.sin(y[0]) - 0.1 * y[1]], (0, 2), y0[i].numpy(), method="DOP853", rtol=1e-12, atol=1e-14)
        err = np.abs(ys[-1, i].numpy() - s.y[:, -1]).max()
        assert err < {"gl4": 1e-5, "gl6": 1e-8, "radauIIA3": 1e-3, "radauIIA5": 1e-6}[name]


def test_collocation_gradient_matches_expm_derivative():
    # d y(T) / d y0 = expm(A T) exactly for a linear field; radauIIA5 with h = 0.05 is within 1e-7
    A = torch.tensor([[-1.0, 2.0], [-2.0, -1.5]], dtype=D)
    y0 = torch.tensor([1.0, 0.5], dtype=D, requires_grad=True)
    ys = solvers.odeint(lambda t, y: A @ y, y0, torch.tensor([0.0, 1.0], dtype=D), method="radauIIA5",
                        options=dict(step_size=0.05, root_rtol=1e-13, root_atol=1e-15))
    J = torch.stack([torch.autograd.grad(ys[-1, i], y0, retain_graph=True)[0] for i in range(2)])
    assert torch.allclose(J, torch.linalg.matrix_exp(A), atol=1e-8, rtol=0)


def test_collocation_failure_is_reported_with_hint():
    # y' = y with a Radau IIA step h = 3: I - h(A kron 1) is singular for h = 1/eigenvalue of A... use a
    # hopeless fixed-point iteration instead: stiff decay with Picard diverges
    with pytest.raises(solvers.RootFinderError, match="hint=try root_finder='newton'"):
        solvers.odeint(lambda t, y: -1e4 * y, torch.ones(2, dtype=D), torch.tensor([0.0, 1.0], dtype=D),
                       method="gl4", options=dict(step_size=0.1, root_finder="fixed_point"))
