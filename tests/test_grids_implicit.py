"""Implicit methods on per-sample time grids (``t`` ``[B, T]``): each sample takes
its own step size ``h_b`` (the root finders get a per-sample ``gamma = h a_ii``).

References: the exact discrete solution of backward Euler on ``y' = lambda_b y``
(``prod 1/(1 - h lambda_b)`` over the sample's own steps), B separate shared-grid solves
and ``gradcheck`` in float64 for the implicit-function-theorem gradients. With fixed-point
and Anderson iterations the batched and separate solves agree to rounding; with Newton
(and Newton–Krylov) the batch refreshes its Jacobian when any sample converges slowly, so
the iterates differ within the root tolerance, propagated (margins per case below).
"""

from __future__ import annotations

import pytest
import torch

import solvers
from _grids_common import lengths_of, random_grid

F64 = torch.float64
A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=F64)
TIGHT = dict(root_rtol=1e-11, root_atol=1e-12)


def field(t, y):
    """Non-autonomous, nonlinear: a wrong per-sample time or step shows."""
    return torch.tanh(y) @ A.T + torch.sin(t)[:, None] - 0.2 * y if t.ndim else torch.tanh(y) @ A.T + torch.sin(t) - 0.2 * y


def grid(B=4, T=6, seed=0, pad_row=1, pad_from=3):
    return random_grid(B, T, seed, pad_row, pad_from, span=2)



def test_backward_euler_exact_discrete_solution():
    """``y' = lambda_b y``: the batched solve is backward Euler with each sample's own steps."""
    t, _ = grid(B=5, pad_row=2)
    lam = torch.tensor([-0.5, -3.0, -40.0, 1.2, -0.01], dtype=F64)  # a stiff sample among mild ones
    y0 = torch.ones(5, 1, dtype=F64)
    sol = solvers.solve(lambda s, y: lam[:, None] * y, y0, t, method="implicit_euler", options=TIGHT)
    h = (t[:, 1:] - t[:, :-1]).T  # (T-1, B), zero on padding
    exact = torch.cat([torch.ones(1, 5, dtype=F64), torch.cumprod(1 / (1 - h * lam), dim=0)])  # (T, B)
    torch.testing.assert_close(sol.ys[..., 0], exact, rtol=1e-11, atol=0)
    # padding costs the padded sample nothing
    assert sol.stats.sample_accepted.tolist() == [n - 1 for n in lengths_of(t)]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name,opts,tol", [
    # the fixed-point iterations are the same per sample, batched or not: rounding
    ("implicit_euler", dict(root_finder="anderson"), 1e-14),  # observed 0
    ("trapezoid", dict(root_finder="fixed_point", step_size=0.1), 1e-14),  # 9e-16
    ("implicit_midpoint", dict(root_finder="fixed_point"), 1e-14),  # 2e-16
    # Newton's iterates depend on when the batch refreshes its Jacobian: the root tolerance
    # propagated. The separate (shared-grid) solve is the less accurate one here: on the
    # reversed implicit_midpoint case it stops 8.7e-10 from the root of its first step (a
    # 50-iteration Newton reference), the batched solve 2e-16.
    ("implicit_euler", {}, 1e-10),  # observed 2.6e-11
    ("implicit_midpoint", {}, 3e-9),  # 1.3e-9
    ("trapezoid", dict(step_size=0.1), 3e-10),  # 7.7e-11
    ("sdirk2", {}, 5e-10),  # 1.3e-10
    ("implicit_euler", dict(root_finder="newton_krylov", step_size=0.25), 2e-8),  # 7.2e-9
    # the collocation methods (coupled stages, the per-sample step a row scaling of the
    # coupled system; worst of both directions observed)
    ("gl4", {}, 1e-9),  # 3.8e-11
    ("gl6", dict(step_size=0.15), 1e-9),  # 5.4e-11
    ("radauIIA3", dict(step_size=0.25), 1e-9),  # 6.4e-11 (not its whole intervals: see the failure test)
    ("radauIIA5", {}, 1e-9),  # 7.1e-11
    ("gl4", dict(root_finder="newton_krylov"), 1e-8),  # 2.4e-9
    ("radauIIA5", dict(root_finder="fixed_point", step_size=0.05), 1e-14),  # the same iterations: 0
])
def test_equals_separate_solves(name, opts, tol, reverse):
    t, y0 = grid()
    t = -t if reverse else t
    o = dict(opts, **TIGHT)
    sol = solvers.solve(field, y0, t, method=name, options=o)
    for b, L in enumerate(lengths_of(t)):
        one = solvers.solve(field, y0[b : b + 1], t[b, :L], method=name, options=o)
        torch.testing.assert_close(sol.ys[:L, b], one.ys[:, 0], rtol=0, atol=tol)
        torch.testing.assert_close(sol.ys[L:, b], one.ys[-1:, 0].expand(t.shape[1] - L, 2), rtol=0, atol=tol)


@pytest.mark.parametrize("name", ["trapezoid", "gl4", "radauIIA5"])  # ESDIRK and collocation (coupled stages)
def test_ift_gradients_equal_the_sum_over_samples(name):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).to(F64)
    f = lambda s, y: net(y) - y + torch.cos(s)[..., None]  # noqa: E731
    t, y0 = grid(B=3)
    y0 = y0.requires_grad_(True)
    sol = solvers.solve(f, y0, t, method=name, options=TIGHT)
    loss = (sol.ys ** 2).sum()
    g_y0, *g_p = torch.autograd.grad(loss, [y0, *net.parameters()])
    ref_p = [torch.zeros_like(p) for p in net.parameters()]
    for b, L in enumerate(lengths_of(t)):
        yb = y0[b : b + 1].detach().requires_grad_(True)
        one = solvers.solve(f, yb, t[b, :L], method=name, options=TIGHT)
        lb = (one.ys ** 2).sum() + (t.shape[1] - L) * (one.ys[-1] ** 2).sum()  # padded outputs repeat the last
        gb, *gp = torch.autograd.grad(lb, [yb, *net.parameters()])
        torch.testing.assert_close(g_y0[b], gb[0], rtol=1e-8, atol=1e-10)
        ref_p = [r + g for r, g in zip(ref_p, gp)]
    for a, r in zip(g_p, ref_p):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("finder", ["newton", "fixed_point"])
def test_gradcheck(finder):
    """IFT gradients with respect to y0 and the field's parameters vs finite differences."""
    torch.manual_seed(1)
    W = torch.randn(2, 2, dtype=F64, requires_grad=True)
    y0 = torch.randn(2, 2, dtype=F64, requires_grad=True)
    t = torch.tensor([[0.0, 0.15, 0.3], [0.1, 0.2, 0.2]], dtype=F64)  # different steps, one padded

    def run(y0, W):
        opts = dict(root_finder=finder, root_rtol=1e-13, root_atol=1e-14)
        return solvers.solve(lambda s, y: torch.tanh(y @ W.T) - y, y0, t, method="implicit_euler", options=opts, params=[W]).ys

    assert torch.autograd.gradcheck(run, (y0, W), atol=1e-6, rtol=1e-5)


def test_dense_output_per_sample():
    t, y0 = grid(B=3)
    sol = solvers.solve(field, y0, t, method="trapezoid", options=TIGHT, dense=True)
    tq = t[:, :1] + 0.37 * (t.max(dim=1, keepdim=True).values - t[:, :1])
    for b, L in enumerate(lengths_of(t)):
        one = solvers.solve(field, y0[b : b + 1], t[b, :L], method="trapezoid", options=TIGHT, dense=True)
        torch.testing.assert_close(sol.evaluate(tq)[:, b], one.evaluate(tq[b])[:, 0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("name,rtol,tol,reverse", [
    # Newton's Jacobian refreshes differ batched and alone (see test_equals_separate_solves)
    ("kvaerno3", 1e-5, 1e-9, False),  # observed 3.4e-10
    ("trbdf2", 1e-5, 1e-9, True),  # 1.6e-10
    ("kvaerno5", 1e-8, 1e-8, False),  # 2.5e-9
    ("kvaerno5", 1e-8, 1e-8, True),  # 1.1e-9
])
def test_adaptive_esdirk_equals_separate_solves(name, rtol, tol, reverse):
    """Adaptive implicit methods: every sample its own step size and accept/reject."""
    t, y0 = grid()
    t = -t if reverse else t
    sol = solvers.solve(field, y0, t, method=name, rtol=rtol, atol=rtol, options=TIGHT)
    for b, L in enumerate(lengths_of(t)):
        one = solvers.solve(field, y0[b : b + 1], t[b, :L], method=name, rtol=rtol, atol=rtol, options=TIGHT)
        torch.testing.assert_close(sol.ys[:L, b], one.ys[:, 0], rtol=0, atol=tol)
        torch.testing.assert_close(sol.ys[L:, b], one.ys[-1:, 0].expand(t.shape[1] - L, 2), rtol=0, atol=tol)
        assert int(sol.stats.sample_accepted[b]) == one.stats.n_accepted


def test_adaptive_esdirk_stiff_sample_does_not_slow_the_others():
    """``y' = lambda_b y`` with one very stiff sample: the others take exactly the steps they
    take without it, and every sample matches ``exp(lambda_b t)`` to its tolerance."""
    t = torch.tensor([[0.0, 0.5, 1.0, 2.0]], dtype=F64).expand(4, 4).contiguous()
    lam = torch.tensor([-0.5, -2.0, -1e4, -1.0], dtype=F64)
    y0 = torch.ones(4, 1, dtype=F64)

    def run(keep):
        f = lambda s, y: lam[keep][:, None] * y  # noqa: E731
        return solvers.solve(f, y0[keep], t[keep], method="kvaerno5", rtol=1e-8, atol=1e-10, options=TIGHT)

    every = run(torch.arange(4))
    mild = run(torch.tensor([0, 1, 3]))
    assert every.stats.sample_accepted[[0, 1, 3]].tolist() == mild.stats.sample_accepted.tolist()
    assert int(every.stats.sample_accepted[2]) > int(every.stats.sample_accepted[0])
    exact = torch.exp(lam[None, :] * t.T)  # (T, B)
    # kvaerno5's own global error at rtol 1e-8: 3.8e-7 on sample 0, as on a shared grid
    torch.testing.assert_close(every.ys[..., 0], exact, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_adaptive_esdirk_gradients():
    """Direct (implicit-function theorem) gradients equal the sum over separate solves; the
    continuous adjoint (explicit backward method) agrees with them."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).to(F64)
    f = lambda s, y: net(y) - y + torch.cos(s)[..., None]  # noqa: E731
    t, y0 = grid(B=3)
    kw = dict(method="kvaerno5", rtol=1e-8, atol=1e-8, options=TIGHT)
    sol = solvers.solve(f, y0, t, **kw)
    g = torch.autograd.grad((sol.ys ** 2).sum(), list(net.parameters()))
    ref = [torch.zeros_like(p) for p in net.parameters()]
    for b, L in enumerate(lengths_of(t)):
        one = solvers.solve(f, y0[b : b + 1], t[b, :L], **kw)
        lb = (one.ys ** 2).sum() + (t.shape[1] - L) * (one.ys[-1] ** 2).sum()
        ref = [r + gp for r, gp in zip(ref, torch.autograd.grad(lb, list(net.parameters())))]
    for a, r in zip(g, ref):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-10)
    adj = solvers.solve(f, y0, t, gradient="adjoint", params=list(net.parameters()),
                        gradient_options=dict(method="dopri5", rtol=1e-10, atol=1e-10), **kw)
    ga = torch.autograd.grad((adj.ys ** 2).sum(), list(net.parameters()))
    for a, r in zip(ga, g):  # observed 1.2e-6 of the largest entry
        torch.testing.assert_close(a, r, rtol=0, atol=5e-6 * float(r.abs().max()))


def test_adaptive_esdirk_root_failure_names_the_sample():
    """A sample whose implicit stage cannot converge at any allowed step: RootFinderError
    naming it (not a non-finite state, not a step-size underflow of another sample)."""
    lam = torch.tensor([-0.5, -2000.0], dtype=F64)
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64)
    opts = dict(root_finder="fixed_point", max_iters=10, min_step=0.05)
    with pytest.raises(solvers.RootFinderError, match=r"implicit solve of sample 1 kept failing.*fixed_point"):
        solvers.solve(lambda s, y: lam[:, None] * y, torch.ones(2, 1, dtype=F64), t, method="kvaerno3", options=opts)
    sol = solvers.solve(lambda s, y: lam[:, None] * y, torch.ones(2, 1, dtype=F64), t, method="kvaerno3", options=opts,
                        raise_on_failure=False)
    assert sol.status is solvers.Status.ROOT_FINDER and sol.stats.n_root_failures > 0


def test_still_refused_by_name():
    t, y0 = grid(B=2, pad_row=None)
    for name in ("explicit_adams", "fixed_adams", "implicit_adams"):  # multistep methods run their own loop
        with pytest.raises(ValueError, match=rf"'{name}' runs its own loop.*does not run on a per-sample `t`.*'radau5'"):
            solvers.solve(field, y0, t, method=name, options=dict(step_size=0.1) if name == "fixed_adams" else None)


# ----------------------------------------------------------------------------- collocation methods
# Gauss-Legendre and Radau IIA solve their s stages coupled; on a per-sample grid the coupled
# system's step factor is a per-sample row scaling (``gamma`` ``(B, s n)``).

GAUSS4 = lambda z: (1 + z / 2 + z * z / 12) / (1 - z / 2 + z * z / 12)  # noqa: E731  gl4's stability function
RADAU3 = lambda z: (1 + z / 3) / (1 - 2 * z / 3 + z * z / 6)  # noqa: E731  radauIIA3's


@pytest.mark.parametrize("name,R", [("gl4", GAUSS4), ("radauIIA3", RADAU3)])
def test_collocation_exact_discrete_solution(name, R):
    """``y' = lambda_b y``: each sample's steps multiply by the method's ``R(h lambda_b)``."""
    t, _ = grid(B=5, pad_row=2)
    lam = torch.tensor([-0.5, -3.0, -40.0, 1.2, -0.01], dtype=F64)
    sol = solvers.solve(lambda s, y: lam[:, None] * y, torch.ones(5, 1, dtype=F64), t, method=name, options=TIGHT)
    h = (t[:, 1:] - t[:, :-1]).T  # (T-1, B), zero on padding: R(0) = 1
    exact = torch.cat([torch.ones(1, 5, dtype=F64), torch.cumprod(R(h * lam), dim=0)])
    torch.testing.assert_close(sol.ys[..., 0], exact, rtol=1e-11, atol=0)
    assert sol.stats.sample_accepted.tolist() == [n - 1 for n in lengths_of(t)]


def test_collocation_root_failure_names_the_sample():
    """Reversed in time the field expands; radauIIA3's simplified Newton does not converge on
    sample 1's first interval (0.71 long) in 10 iterations, alone or batched: the error names
    that sample and its time, not the batch's earliest."""
    t, y0 = grid()
    t = -t
    with pytest.raises(solvers.RootFinderError, match=r"did not converge"):
        solvers.solve(field, y0[1:2], t[1, :3], method="radauIIA3", options=TIGHT)
    with pytest.raises(solvers.RootFinderError, match=r"batched step 0 \(sample 1 at t=-0.70782\) did not converge.*newton") as err:
        solvers.solve(field, y0, t, method="radauIIA3", options=TIGHT)
    assert "samples=" not in str(err.value)  # one sample failed: no list
    sol = solvers.solve(field, y0, t, method="radauIIA3", options=TIGHT, raise_on_failure=False)
    assert sol.status is solvers.Status.ROOT_FINDER and sol.ys.shape[0] == 1


def test_collocation_state_of_several_dimensions():
    """A ``[B, 2, 3]`` state: the per-sample step reaches every unknown of the flat view."""
    t, _ = grid(B=3)
    M = torch.tensor([[-1.0, 2.0, 0.0], [-2.0, -1.0, 0.5], [0.0, -0.5, -0.3]], dtype=F64)
    f = lambda s, y: torch.tanh(y) @ M.T - 0.1 * y  # noqa: E731
    y0 = torch.randn(3, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    o = dict(TIGHT, step_size=0.2)
    sol = solvers.solve(f, y0, t, method="radauIIA5", options=o)
    for b, L in enumerate(lengths_of(t)):
        one = solvers.solve(f, y0[b : b + 1], t[b, :L], method="radauIIA5", options=o)
        torch.testing.assert_close(sol.ys[:L, b], one.ys[:, 0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["gl4", "radau5"])
def test_collocation_gradcheck(name):
    """IFT gradients with respect to y0, the field's parameters and the times vs finite differences."""
    torch.manual_seed(1)
    W = torch.randn(2, 2, dtype=F64, requires_grad=True)
    y0 = torch.randn(2, 2, dtype=F64, requires_grad=True)
    t = torch.tensor([[0.0, 0.15, 0.3], [0.1, 0.2, 0.25]], dtype=F64, requires_grad=True)  # (padding: not differentiable in t)

    def run(y0, W, t):
        opts = dict(root_rtol=1e-13, root_atol=1e-14)
        if name == "radau5":  # the adaptive steps must not move under the perturbation: one step per interval
            opts.update(first_step=0.2, max_step=0.2)
        return solvers.solve(lambda s, y: torch.tanh(y @ W.T) - y, y0, t, method=name, rtol=1e-3, atol=1e-3,
                             options=opts, params=[W]).ys

    assert torch.autograd.gradcheck(run, (y0, W, t), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("reverse", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_radau5_equals_separate_solves(reverse):
    """Adaptive radau5: every sample its own step size and accept/reject, the same number of
    accepted steps as alone. The error estimate solves with the Jacobian Newton keeps, whose
    age depends on the batch (it is refreshed when any sample converges slowly), and the
    separate solve starts Newton from the previous step's polynomial, the batched one from
    the predictor: the step sizes differ slightly, so the solutions agree to the method's
    own global error (1.3e-9 against a dopri5 solve at 1e-12), not to rounding."""
    t, y0 = grid()
    t = -t if reverse else t
    kw = dict(method="radau5", rtol=1e-9, atol=1e-9, options=TIGHT)
    sol = solvers.solve(field, y0, t, **kw)
    ref = solvers.solve(field, y0, t, method="dopri5", rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sol.ys, ref.ys, rtol=0, atol=5e-9)  # observed 1.3e-9
    for b, L in enumerate(lengths_of(t)):
        one = solvers.solve(field, y0[b : b + 1], t[b, :L], **kw)
        torch.testing.assert_close(sol.ys[:L, b], one.ys[:, 0], rtol=0, atol=5e-9)  # observed 1.1e-9
        assert int(sol.stats.sample_accepted[b]) == one.stats.n_accepted


def test_radau5_stiff_sample_does_not_slow_the_others():
    """Van der Pol at mu = 1000 next to mild oscillators: the mild samples take the steps they
    take alone, and every sample matches scipy's Radau at tight tolerance. (On [0, 2] the stiff
    sample follows its slow manifold, where radau5 takes long steps: fewer than the mild ones.)"""
    from scipy.integrate import solve_ivp

    mu = torch.tensor([1.0, 2.0, 1000.0], dtype=F64)

    def vdp(mu):
        return lambda s, y: torch.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], dim=1)

    t = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=F64).expand(3, 4).contiguous()
    y0 = torch.tensor([[2.0, 0.0]] * 3, dtype=F64)
    kw = dict(method="radau5", rtol=1e-7, atol=1e-9, options=TIGHT)
    every = solvers.solve(vdp(mu), y0, t, **kw)
    mild = solvers.solve(vdp(mu[:2]), y0[:2], t[:2], **kw)
    assert every.stats.sample_accepted[:2].tolist() == mild.stats.sample_accepted.tolist()
    for b in range(3):
        m = float(mu[b])
        ref = solve_ivp(lambda s, y: [y[1], m * (1 - y[0] ** 2) * y[1] - y[0]], (0, 2), [2.0, 0.0], method="Radau",
                        t_eval=t[0].tolist(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(every.ys[:, b], torch.tensor(ref.y.T), rtol=0, atol=2e-6)  # radau5's own global error
