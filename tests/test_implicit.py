"""Implicit methods: order, stability, gradients (IFT), failure reporting and stats."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import solvers

D = torch.float64
FIXED = sorted(n for n, c in solvers.METHODS.items() if c.implicit and not c.adaptive)
ADAPTIVE = [n for n, c in solvers.METHODS.items() if c.implicit and c.adaptive]
FINDERS = ["fixed_point", "anderson", "newton", "newton_krylov"]

A = np.array([[-1.0, 2.0], [-2.0, -1.5]])  # a damped rotation; exact solution by expm
Y0 = np.array([1.0, 0.5])


def test_registry_flags():
    for name in FIXED:
        cls = solvers.METHODS[name]
        assert cls.implicit and not cls.adaptive
    assert "kvaerno3" in ADAPTIVE and "kvaerno5" in ADAPTIVE
    for name in ADAPTIVE:
        assert issubclass(solvers.METHODS[name], solvers.AbstractImplicitSolver)


def _linear(t, y):
    return y @ torch.as_tensor(A).T


def _order_fit(errors, hs):
    return np.polyfit(np.log(hs), np.log(errors), 1)[0]


@pytest.mark.parametrize("name", FIXED)
def test_convergence_order_fixed(name):
    T = 1.0
    exact = scipy.linalg.expm(A * T) @ Y0
    hs, errs = [0.1, 0.05, 0.025, 0.0125], []
    for h in hs:
        ys = solvers.odeint(_linear, torch.tensor(Y0), torch.tensor([0.0, T], dtype=D), method=name, rtol=1e-12, atol=1e-14, options=dict(step_size=h))
        errs.append(np.abs(ys[-1].numpy() - exact).max())
    assert abs(_order_fit(errs, hs) - solvers.METHODS[name].order) < 0.15


@pytest.mark.parametrize("name", ADAPTIVE)
def test_convergence_order_adaptive(name):
    # constant steps through the adaptive loop: huge tolerances accept every step, max_step caps h
    T = 1.0
    exact = scipy.linalg.expm(A * T) @ Y0
    hs, errs, ests = [0.25, 0.125, 0.0625], [], []  # exact in binary
    if name == "radau5":  # its filtered estimate (I - gamma0 h J)^-1 (...) is asymptotic for h|J| << 1 only
        hs = [0.0625, 0.03125, 0.015625]
    for h in hs:
        sol = solvers.solve(_linear, torch.tensor(Y0), torch.tensor([0.0, T], dtype=D), method=name, rtol=1e6, atol=1e6,
                            options=dict(first_step=h, max_step=h, root_rtol=1e-13, root_atol=1e-15))
        assert sol.stats.n_rejected == 0 and sol.stats.n_steps == round(T / h)
        errs.append(np.abs(sol.ys[-1].numpy() - exact).max())
        # local error estimate of one step ~ h^(min(order, error_order) + 1): the difference of
        # the two solutions is as large as the less accurate one (TR-BDF2's embedded one is better)
        m = solvers.METHODS[name]()
        y0 = torch.tensor(Y0)
        res = m.step(_linear, [torch.tensor(c * h, dtype=D) for c in m.stage_c], y0, h, _linear(None, y0))
        ests.append(float(res.error.abs().max()))
    order = solvers.METHODS[name].order
    assert abs(_order_fit(errs, hs) - order) < 0.3
    assert abs(_order_fit(ests, hs) - (min(order, solvers.METHODS[name].error_order) + 1)) < 0.3


def test_adaptive_accuracy_against_expm():
    for name in ADAPTIVE:
        sol = solvers.solve(_linear, torch.tensor(Y0), torch.linspace(0, 2, 5, dtype=D), method=name, rtol=1e-7, atol=1e-9)
        exact = np.stack([scipy.linalg.expm(A * t) @ Y0 for t in np.linspace(0, 2, 5)])
        assert np.abs(sol.ys.numpy() - exact).max() < 1e-5, name


def test_l_stability_backward_euler_vs_explicit_euler():
    lam, h = -1000.0, 1.0  # h * lam = -1000
    f = lambda t, y: lam * y
    t = torch.arange(0.0, 11.0, dtype=D)
    y0 = torch.tensor([1.0], dtype=D)
    ys = solvers.odeint(f, y0, t, method="implicit_euler", options=dict(step_size=h))
    # each step multiplies by R(h lam) = 1/(1 - h lam) = 1/1001: decays and damps
    ratios = (ys[1:, 0] / ys[:-1, 0]).numpy()
    assert np.allclose(ratios, 1 / 1001, rtol=1e-6)
    assert abs(float(ys[-1, 0])) < 1e-29
    ye = solvers.odeint(f, y0, t, method="euler", options=dict(step_size=h))
    assert abs(float(ye[-1, 0])) > 1e29  # |1 + h lam| = 999 per step


def test_schrodinger_norm_preserved_by_implicit_midpoint():
    torch.manual_seed(0)
    n = 4
    M = torch.randn(n, n, dtype=torch.complex128)
    H = (M + M.conj().T) / 2  # Hermitian
    psi0 = torch.randn(n, dtype=torch.complex128)
    psi0 = psi0 / torch.linalg.vector_norm(psi0)
    f = lambda t, psi: -1j * (H @ psi)  # i dpsi/dt = H psi
    t = torch.tensor([0.0, 10.0], dtype=D)
    opts = dict(step_size=0.01, root_rtol=0.0, root_atol=1e-15)
    sol = solvers.solve(f, psi0, t, method="implicit_midpoint", options=opts)
    assert sol.stats.n_steps == 1000 and sol.stats.n_root_failures == 0
    assert abs(float(torch.linalg.vector_norm(sol.ys[-1])) - 1.0) < 1e-10
    exact = torch.linalg.matrix_exp(-1j * H * 10.0) @ psi0
    err = float(torch.linalg.vector_norm(sol.ys[-1] - exact))
    assert err < 4e-4  # second order, h = 0.01: measured 1.88e-4
    half = solvers.solve(f, psi0, t, method="implicit_midpoint", options=dict(opts, step_size=0.02))
    ratio = float(torch.linalg.vector_norm(half.ys[-1] - exact)) / err
    assert 3.8 < ratio < 4.2  # halving h divides the error by 4 (measured 4.00)
    ye = solvers.odeint(f, psi0, t, method="euler", options=dict(step_size=0.01))
    assert float(torch.linalg.vector_norm(ye[-1])) > 1.01


class MLP(torch.nn.Module):
    def __init__(self, d=3, hidden=5):
        super().__init__()
        self.l1 = torch.nn.Linear(d, hidden, dtype=D)
        self.l2 = torch.nn.Linear(hidden, d, dtype=D)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y))) - y


def _functional_field(params):
    W1, b1, W2, b2 = params
    return lambda t, y: torch.tanh(y @ W1.T + b1) @ W2.T + b2 - y


@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("finder", ["fixed_point", "newton"])
def test_gradcheck_state_and_parameters(name, finder):
    torch.manual_seed(1)
    mlp = MLP()
    params = [p.detach().clone().requires_grad_() for p in mlp.parameters()]
    y0 = torch.randn(2, 3, dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 0.2, 0.3], dtype=D)

    def run(y0, *ps):
        opts = dict(step_size=0.1, root_finder=finder, root_rtol=1e-13, root_atol=1e-14)
        return solvers.solve(_functional_field(ps), y0, t, method=name, options=opts, params=ps).ys

    assert torch.autograd.gradcheck(run, (y0, *params), atol=1e-6, rtol=1e-5)


def _unrolled_backward_euler(f, y0, h, n, iters=80):
    """Backward Euler by plain Picard iteration, differentiated through every iteration."""
    y = y0
    for _ in range(n):
        z = y
        for _ in range(iters):
            z = y + h * f(None, z)
        y = z
    return y


@pytest.mark.parametrize("finder", FINDERS)
def test_ift_gradient_matches_unrolled_solve(finder):
    torch.manual_seed(2)
    mlp = MLP()
    y0 = torch.randn(4, 3, dtype=D, requires_grad=True)
    h, n = 0.1, 5  # h * Lip < 1: the unrolled Picard iteration converges to round-off
    out = solvers.odeint(mlp, y0, torch.tensor([0.0, h * n], dtype=D), method="implicit_euler",
                         options=dict(step_size=h, root_finder=finder, root_rtol=1e-14, root_atol=1e-15))[-1]
    w = torch.randn_like(out)
    g_ift = torch.autograd.grad((out * w).sum(), [y0, *mlp.parameters()])
    ref = _unrolled_backward_euler(mlp, y0, h, n)
    assert torch.allclose(out, ref, atol=1e-12)
    g_ref = torch.autograd.grad((ref * w).sum(), [y0, *mlp.parameters()])
    for a, b in zip(g_ift, g_ref):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-8)


def test_kvaerno_gradient_matches_expm_derivative():
    # y(T) = expm(A T) y0, so d(w . y(T))/d y0 = expm(A T)^T w
    y0 = torch.tensor(Y0, requires_grad=True)
    T = 1.0
    for name in ADAPTIVE:
        y0.grad = None
        yT = solvers.odeint(_linear, y0, torch.tensor([0.0, T], dtype=D), method=name, rtol=1e-7, atol=1e-9)[-1]
        w = torch.tensor([0.3, -1.2], dtype=D)
        (yT * w).sum().backward()
        expected = scipy.linalg.expm(A * T).T @ w.numpy()
        assert np.abs(y0.grad.numpy() - expected).max() < 2e-5, name


def test_time_gradient_through_implicit_step():
    # y' = -y: y(T) = exp(-T) y0, and backward Euler's y_n = (1 + T/n)^(-n) y0 is smooth in T
    T = torch.tensor(0.7, dtype=D, requires_grad=True)
    t = torch.stack([torch.zeros((), dtype=D), T])
    y = solvers.odeint(lambda t, y: -y, torch.tensor([1.0], dtype=D), t, method="implicit_euler", options=dict(root_finder="newton"))[-1, 0]
    (dT,) = torch.autograd.grad(y, T)
    assert abs(float(dT) - (-1 / (1 + 0.7) ** 2)) < 1e-9  # d/dT (1 + T)^-1 (one step)


def test_picard_divergence_reported_newton_converges():
    # h * Lip(f) ~ 5 > 1: Picard diverges on every step; Newton solves it
    k, h = 50.0, 0.1
    f = lambda t, y: -k * y + torch.sin(y)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=D)
    t = torch.tensor([0.0, 1.0], dtype=D)
    with pytest.raises(solvers.RootFinderError) as err:
        solvers.odeint(f, y0, t, method="implicit_euler", options=dict(step_size=h, root_finder="fixed_point"))
    msg = str(err.value)
    for word in ("step 0", "t=0", "iterations=", "residual=", "diverged", "fixed_point"):  # the step, time, cost, residual
        assert word in msg, (word, msg)
    sol = solvers.solve(f, y0, t, method="implicit_euler", options=dict(step_size=h, root_finder="fixed_point"), raise_on_failure=False)
    assert sol.status is solvers.Status.ROOT_FINDER and sol.stats.n_root_failures == 1
    sol = solvers.solve(f, y0, t, method="implicit_euler", options=dict(step_size=h, root_finder="newton"))
    assert sol.success and sol.stats.n_root_failures == 0
    # simplified Newton keeps the Jacobian across the 10 steps: J = -k + cos(y) varies by < 2/k
    assert 1 <= sol.stats.n_jac_evals < 10
    # check one step against scipy's scalar root: z + h k tanh z = y0
    from scipy.optimize import brentq

    z = brentq(lambda z: z + h * (k * z - math.sin(z)) - 1.0, -2, 2)
    y1 = solvers.odeint(f, y0, torch.tensor([0.0, h], dtype=D), method="implicit_euler", options=dict(step_size=h, root_finder="newton"))[-1]
    assert abs(float(y1[0, 0]) - z) < 1e-8


def test_jacobian_reuse_is_per_solve_and_keeps_accuracy():
    # stiff linear system (eigenvalues -1, -1e4): Jacobians are reused across steps, the
    # answer matches expm, and the cache lives in the solve, not on the method instance
    A = torch.tensor([[-1.0, 0.0], [9999.0, -10000.0]], dtype=D)
    y0 = torch.tensor([1.0, 0.0], dtype=D)
    t = torch.tensor([0.0, 2.0], dtype=D)
    f = lambda t, y: A @ y
    method = solvers.METHODS["kvaerno5"]()
    first = solvers.solve(f, y0, t, method=method, rtol=1e-8, atol=1e-10)
    again = solvers.solve(f, y0, t, method=method, rtol=1e-8, atol=1e-10)
    fresh = solvers.solve(f, y0, t, method="kvaerno5", rtol=1e-8, atol=1e-10)
    exact = torch.linalg.matrix_exp(2.0 * A) @ y0
    for sol in (first, again, fresh):
        assert torch.allclose(sol.ys[-1], exact, rtol=1e-6, atol=1e-9)
    assert first.stats.n_jac_evals == again.stats.n_jac_evals == fresh.stats.n_jac_evals
    assert torch.equal(again.ys, fresh.ys)
    assert fresh.stats.n_jac_evals <= 2 < fresh.stats.n_steps  # linear: J never goes stale


def test_adaptive_rejects_failed_root_find_and_shrinks():
    # stiff linear problem with Picard: large steps fail to converge and are rejected
    f = lambda t, y: -200.0 * (y - torch.cos(t))
    y0 = torch.tensor([0.0], dtype=D)
    sol = solvers.solve(f, y0, torch.tensor([0.0, 0.2], dtype=D), method="kvaerno3", rtol=1e-6, atol=1e-8,
                        options=dict(root_finder="fixed_point", first_step=0.1))
    assert sol.success and sol.stats.n_root_failures > 0 and sol.stats.n_rejected >= sol.stats.n_root_failures // 3
    exact_tail = 200 * (200 * math.cos(0.2) + math.sin(0.2)) / (200**2 + 1)  # transient exp(-40) is gone
    assert abs(float(sol.ys[-1, 0]) - exact_tail) < 1e-5


def test_auto_picks_newton_krylov_for_large_states():
    lam = -torch.linspace(0.5, 3.0, 300, dtype=D)
    f = lambda t, y: lam * y
    y0 = torch.ones(2, 300, dtype=D)
    sol = solvers.solve(f, y0, torch.tensor([0.0, 1.0], dtype=D), method="trapezoid", options=dict(step_size=0.1))
    assert sol.stats.n_jvp_evals > 0 and sol.stats.n_jac_evals == 0
    r = (1 + 0.05 * lam) / (1 - 0.05 * lam)
    assert torch.allclose(sol.ys[-1], y0 * r**10, rtol=1e-6)
    assert solvers.METHODS["trapezoid"]().root_finder_for(torch.ones(2, 3)).name == "newton"


def test_stats_forward_and_backward():
    torch.manual_seed(3)
    mlp = MLP()
    y0 = torch.randn(3, 3, dtype=D, requires_grad=True)
    sol = solvers.solve(mlp, y0, torch.tensor([0.0, 0.5], dtype=D), method="implicit_euler", options=dict(step_size=0.1, root_finder="newton"))
    s = sol.stats
    assert s.n_root_solves == 5 and s.max_root_iters >= 2 and s.mean_root_iters >= 2 and s.n_linear_solves == s.n_root_iters
    sol.ys[-1].sum().backward()
    assert s.n_backward_root_iters > 0 and s.n_f_evals_backward == 5 and s.n_vjp_evals > 0
    assert y0.grad is not None and bool(torch.isfinite(y0.grad).all())


def test_object_root_finder_and_bad_options():
    f = lambda t, y: -y
    y0 = torch.ones(3, dtype=D)
    t = torch.tensor([0.0, 1.0], dtype=D)
    ys = solvers.odeint(f, y0, t, method="implicit_euler", options=dict(step_size=0.5, root_finder=solvers.Anderson(m=3)))
    assert torch.allclose(ys[-1], y0 / 1.5**2, rtol=1e-7)
    with pytest.raises(ValueError, match="root_finder"):
        solvers.odeint(f, y0, t, method="implicit_euler", options=dict(step_size=0.5, root_finder="broyden"))
    with pytest.raises(ValueError, match="damping"):
        solvers.odeint(f, y0, t, method="implicit_euler", options=dict(step_size=0.5, root_finder="newton", damping=0.5))
    with pytest.raises(ValueError, match="predictor"):
        solvers.odeint(f, y0, t, method="trapezoid", options=dict(step_size=0.5, predictor="taylor"))
    with pytest.raises(ValueError, match="root_rtol"):
        solvers.odeint(f, y0, t, method="kvaerno3", options=dict(root_rtol=-1.0))


@pytest.mark.slow
def test_adjoint_mode_with_implicit_method():
    if "adjoint" not in solvers.GRADIENT_MODES:
        pytest.skip("no adjoint gradient mode registered")
    torch.manual_seed(4)
    mlp = MLP()
    y0 = torch.randn(2, 3, dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=D)
    grads = []
    for mode, gopts in (("direct", None), ("adjoint", dict(method="dopri5", options={}))):
        out = solvers.solve(mlp, y0, t, method="kvaerno3", rtol=1e-8, atol=1e-10, gradient=mode, gradient_options=gopts).ys[-1]
        grads.append(torch.autograd.grad(out.sum(), [y0, *mlp.parameters()]))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
