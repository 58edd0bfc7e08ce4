"""Implicit methods on the states the explicit ones accept: complex, tuple, decreasing time.

Every number is checked against a closed form (the matrix exponential of a linear problem,
and its derivative) or against float64 ``gradcheck``.
"""

import numpy as np
import pytest
import scipy.linalg
import torch

import solvers

D, C = torch.float64, torch.complex128
IMPLICIT = sorted(n for n, c in solvers.METHODS.items() if c.implicit)
FIXED_IMPLICIT = [n for n in IMPLICIT if not solvers.METHODS[n].adaptive]
PAIRS = [n for n in IMPLICIT if solvers.METHODS[n].adaptive]
FINDERS = ["fixed_point", "anderson", "newton", "newton_krylov"]


def _complex_problem():
    """y' = s A y with A = -(B B^H)/4 - i H (dissipative, rotating), s a real parameter."""
    g = torch.Generator().manual_seed(0)
    B = torch.randn(3, 3, generator=g, dtype=C) / 3
    M = torch.randn(3, 3, generator=g, dtype=C) / 3
    A = -(B @ B.conj().T) / 4 - 1j * (M + M.conj().T) / 2
    y0 = torch.randn(2, 3, generator=g, dtype=C)
    return A, y0


def _exact_complex(A, y0, s, T):
    """y(T) = y0 expm(s A T)^T per sample, and the gradients of L = sum |y(T)|^2."""
    E = torch.linalg.matrix_exp(s * A * T)
    yT = y0 @ E.T
    g_y0 = 2 * (yT @ E.conj())  # torch's convention for real L of complex z: dL/dRe z + i dL/dIm z
    g_s = 2 * float(torch.real(torch.sum(yT.conj() * (yT @ (A * T).T))))
    return yT, g_y0, g_s


@pytest.mark.parametrize("finder", FINDERS)
@pytest.mark.parametrize("name", PAIRS)
def test_complex_state_adaptive_pairs_match_expm_with_gradients(name, finder):
    A, y0 = _complex_problem()
    y0 = y0.clone().requires_grad_(True)
    s = torch.tensor(1.0, dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=D)
    rtol = {"kvaerno3": 1e-6, "kvaerno5": 1e-8, "radau5": 1e-8, "trbdf2": 1e-8}[name]  # kvaerno3: many steps at 1e-8
    sol = solvers.solve(lambda tt, y: s * (y @ A.T), y0, t, method=name, rtol=rtol, atol=rtol / 100,
                        options=dict(root_finder=finder))
    assert sol.success and sol.ys.dtype == C and sol.stats.n_root_failures == 0
    yT, g_y0, g_s = _exact_complex(A, y0.detach(), 1.0, 2.0)
    loss = sol.ys[-1].abs().pow(2).sum()
    gy0, gs = torch.autograd.grad(loss, [y0, s])
    # worst over the finders (newton_krylov, whose stage errors add up over the steps), measured:
    # kvaerno3 at 1e-6: state 5.2e-6, dL/dy0 9.7e-6, dL/ds 2.5e-5 relative;
    # kvaerno5 at 1e-8: state 1.3e-8, dL/dy0 3.4e-8, dL/ds 8.4e-8 relative;
    # radau5 at 1e-8: state 1.3e-9, dL/dy0 4.1e-8, dL/ds 6.0e-8 relative;
    # trbdf2 at 1e-8 (order 2, 156 steps): state 1.5e-6, dL/dy0 2.7e-6, dL/ds 1.0e-5 relative. Bounds: ~3-4x.
    b_state, b_gy0, b_gs = {"kvaerno3": (2e-5, 4e-5, 1e-4), "kvaerno5": (5e-8, 1e-7, 3e-7),
                            "radau5": (5e-9, 1.5e-7, 2e-7), "trbdf2": (5e-6, 1e-5, 4e-5)}[name]
    assert float((sol.ys[-1] - yT).detach().abs().max()) <= b_state
    assert float((gy0 - g_y0).abs().max()) <= b_gy0
    assert abs(float(gs) - g_s) <= b_gs * abs(g_s)


@pytest.mark.parametrize("finder", FINDERS)
@pytest.mark.parametrize("name", PAIRS)
def test_complex_state_adaptive_pairs_equal_the_real_view(name, finder):
    """A complex state is solved as its real view (re, im pairs): with an absolute tolerance
    and the RMS norm taken on the real view, the two solves take the same steps and root
    iterations and agree to rounding (measured 2e-16 to 3e-12)."""
    A, y0 = _complex_problem()
    Ar, Ai = A.real, A.imag

    def f_real(tt, y):  # y' = A y on (re, im) pairs
        u, v = y[..., 0], y[..., 1]
        return torch.stack([u @ Ar.T - v @ Ai.T, u @ Ai.T + v @ Ar.T], dim=-1)

    def real_rms(x):
        x = torch.view_as_real(x) if x.is_complex() else x
        return torch.linalg.vector_norm(x) / np.sqrt(x.numel())

    t = torch.tensor([0.0, 0.7, 2.0], dtype=D)
    kw = dict(method=name, rtol=0.0, atol=1e-7, options=dict(root_finder=finder, norm=real_rms))
    sc = solvers.solve(lambda tt, y: y @ A.T, y0, t, **kw)
    sr = solvers.solve(f_real, torch.view_as_real(y0).clone(), t, **kw)
    assert sc.success and sr.success and sc.ys.dtype == C
    assert (sc.stats.n_steps, sc.stats.n_root_iters) == (sr.stats.n_steps, sr.stats.n_root_iters)
    assert float((torch.view_as_real(sc.ys) - sr.ys).abs().max()) <= 1e-10


@pytest.mark.parametrize("finder", FINDERS)
@pytest.mark.parametrize("name", FIXED_IMPLICIT)
def test_complex_state_fixed_step_gradcheck(name, finder):
    """The exact gradient of the discretisation, complex y0 and a real parameter, every finder."""
    A, y0 = _complex_problem()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=D)
    opts = dict(step_size=0.1, root_finder=finder, root_rtol=1e-12, root_atol=1e-12)

    def fn(y0, s):
        return solvers.solve(lambda tt, y: s * (y @ A.T) * torch.cos(tt), y0, t, method=name, options=opts).ys

    inputs = (y0.clone().requires_grad_(True), torch.tensor(0.9, dtype=D, requires_grad=True))
    # stages solved to 1e-12: central differences at eps 1e-6 are accurate to ~1e-8 here;
    # fast mode (a random projection of the Jacobian) keeps 12 cases quick
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=True)


def _tuple_field(W):
    def f(t, y):
        a, b = y  # (B, 1), (B, 2)
        z = torch.cat([a, b], dim=-1) @ W.T  # (B, 3)
        return z[..., :1] * torch.cos(t), z[..., 1:]

    return f


def _W():
    return torch.tensor([[-1.0, 0.5, 0.0], [-0.5, -0.3, 1.0], [0.2, -1.0, -0.6]], dtype=D)


@pytest.mark.parametrize("name", IMPLICIT)
def test_tuple_state_equals_concatenated_state(name):
    """A tuple state is solved as the one concatenated state (the same steps, the same numbers),
    and gradients reach every component."""
    W = _W().requires_grad_(True)
    a0 = torch.tensor([[0.3], [-0.8]], dtype=D, requires_grad=True)
    b0 = torch.tensor([[1.0, -0.2], [0.4, 0.9]], dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=D)
    # stages solved to 1e-13: the tuple and the concatenated solves then agree to rounding (at
    # the default root tolerance they agree to it, 1e-9: the iterations stop at other points)
    opts = dict(root_rtol=1e-13, root_atol=1e-13)
    if not solvers.METHODS[name].adaptive:
        opts["step_size"] = 0.05
    tol = 1e-6 if name == "kvaerno3" else 1e-8  # order 3: fewer steps
    kw = dict(method=name, rtol=tol, atol=tol / 100, options=opts)
    tup = solvers.solve(_tuple_field(W), (a0, b0), t, **kw)
    assert isinstance(tup.ys, tuple) and tup.ys[0].shape == (3, 2, 1) and tup.ys[1].shape == (3, 2, 2)

    def cat_field(tt, y):
        fa, fb = _tuple_field(W)(tt, (y[..., :1], y[..., 1:]))
        return torch.cat([fa, fb], dim=-1)

    def tuple_norm(x):  # a tuple state's error norm is the max of the components' RMS norms
        return torch.maximum(x[..., :1].pow(2).mean().sqrt(), x[..., 1:].pow(2).mean().sqrt())

    if solvers.METHODS[name].adaptive:
        kw["options"] = dict(kw["options"], norm=tuple_norm)
    cat = solvers.solve(cat_field, torch.cat([a0, b0], dim=-1), t, **kw)
    both = torch.cat(list(tup.ys), dim=-1)
    assert tup.stats.n_steps == cat.stats.n_steps
    # measured: fixed-step 1.9e-13 to 5.8e-13, kvaerno5 3.7e-14, kvaerno3 3.2e-11 (478 steps)
    assert float((both - cat.ys).detach().abs().max()) <= 1e-10
    ga = torch.autograd.grad(both[-1].pow(2).sum() + both[1].sum(), [a0, b0, W])
    gc = torch.autograd.grad(cat.ys[-1].pow(2).sum() + cat.ys[1].sum(), [a0, b0, W])
    assert max(float((x - y).abs().max()) for x, y in zip(ga, gc)) <= 1e-10  # measured up to 2.4e-11


def _linear(A):
    return lambda tt, y: y @ A.T


@pytest.mark.parametrize("name", IMPLICIT)
def test_decreasing_time_matches_expm(name):
    """Solving from t=1.5 down to 0 (y' = A y, so y(t) = expm(A (t - 1.5)) y(1.5))."""
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=D)
    y0 = torch.tensor([[1.0, 0.5], [-0.3, 0.8]], dtype=D, requires_grad=True)
    t = torch.tensor([1.5, 1.0, 0.3, 0.0], dtype=D)
    cls = solvers.METHODS[name]
    opts = None if cls.adaptive else dict(step_size=0.01, root_rtol=1e-12, root_atol=1e-12)
    rtol = 1e-7 if name == "kvaerno3" else 1e-9
    sol = solvers.solve(_linear(A), y0, t, method=name, rtol=rtol, atol=rtol / 100, options=opts)
    assert sol.success
    An = A.numpy()
    exact = np.stack([y0.detach().numpy() @ scipy.linalg.expm(An * (ti - 1.5)).T for ti in t.numpy()])
    err = float(np.abs(sol.ys.detach().numpy() - exact).max())
    # measured state / gradient errors: implicit_euler 1.4e-2 / 2.1e-2 (order 1, h = 0.01),
    # implicit_midpoint and trapezoid 1.9e-5 / 3.6e-5, kvaerno3 (rtol 1e-7) 4.4e-8 / 5.3e-8,
    # kvaerno5 (rtol 1e-9) 9.4e-8 / 3.9e-9; gl4 4.6e-11 / 6.0e-11, gl6 4.9e-15 / 1.9e-14,
    # radauIIA3 4.0e-8 / 4.9e-8, radauIIA5 4.8e-14 / 6.8e-14, sdirk2 9.0e-6 / 1.8e-5 (h = 0.01);
    # radau5 1.1e-10 / 7.6e-13, trbdf2 4.4e-7 / 8.6e-7 (rtol 1e-9). Bounds: 2-4x
    # (1e-13 floor where the error is rounding).
    b_state, b_grad = {"implicit_euler": (3e-2, 5e-2), "implicit_midpoint": (4e-5, 8e-5), "trapezoid": (4e-5, 8e-5),
                       "kvaerno3": (1.5e-7, 1.5e-7), "kvaerno5": (2.5e-7, 1.5e-8),
                       "gl4": (2e-10, 2e-10), "gl6": (1e-13, 1e-13), "radauIIA3": (1.5e-7, 1.5e-7),
                       "radauIIA5": (1e-13, 2e-13), "sdirk2": (3e-5, 6e-5), "radau5": (4e-10, 3e-12),
                       "trbdf2": (1.5e-6, 3e-6)}[name]
    assert err <= b_state
    # the gradient of sum y(0) w.r.t. y0 (per sample, linear): ones @ expm(-1.5 A)
    (g,) = torch.autograd.grad(sol.ys[-1].sum(), [y0])
    g_exact = np.ones((2, 2)) @ scipy.linalg.expm(An * -1.5)
    assert float(np.abs(g.numpy() - g_exact).max()) <= b_grad


@pytest.mark.parametrize("name", FIXED_IMPLICIT)
def test_decreasing_time_gradcheck(name):
    def fn(y0, W):
        f = lambda tt, y: torch.tanh(y @ W.T) * (1.0 + 0.3 * tt)  # noqa: E731
        t = torch.tensor([1.0, 0.6, 0.0], dtype=D)
        return solvers.solve(f, y0, t, method=name, options=dict(step_size=0.1, root_rtol=1e-12, root_atol=1e-12)).ys

    g = torch.Generator().manual_seed(3)
    inputs = (torch.randn(2, 2, generator=g, dtype=D).requires_grad_(True),
              (torch.randn(2, 2, generator=g, dtype=D) * 0.7).requires_grad_(True))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)
