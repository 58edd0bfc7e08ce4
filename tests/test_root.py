"""Root finders of implicit steps: correctness against closed forms / dense solves,
per-sample convergence, divergence detection, GMRES and the per-sample Jacobian."""

import math

import pytest
import torch

import solvers
from solvers._ift import StageEquation, per_sample_jacobian
from solvers._root import BatchView, Tolerance, get_root_finder, gmres
from solvers._solution import Stats

D = torch.float64
FINDERS = ["fixed_point", "anderson", "newton", "newton_krylov"]


def _field_eq(f, c, gamma, key=None):
    """The stage equation x = c + gamma f(x) in its (B, n) view."""
    view = BatchView(c)
    t = torch.tensor(0.0, dtype=D)
    return StageEquation(lambda t, y: f(y), t, c, gamma, view, key), view


def _tol(rtol=1e-10, atol=1e-12):
    return Tolerance(rtol, atol)


@pytest.mark.parametrize("name", FINDERS)
def test_scalar_cosine_fixed_point_per_sample(name):
    # x = a cos(x) for a in (0.2, 0.5, 0.9): contractions with different rates.
    a = torch.tensor([0.2, 0.5, 0.9], dtype=D)[:, None]
    eq, view = _field_eq(lambda y: a * torch.cos(y), torch.zeros(3, 1, dtype=D), 1.0)
    stats = Stats()
    res = get_root_finder(name).solve(eq, torch.zeros(3, 1, dtype=D), _tol(), stats)
    assert res.ok and bool(res.converged.all())
    x = res.x[:, 0]
    # the root satisfies x - a cos x = 0 to round-off (independent check by bisection below)
    assert torch.allclose(x, a[:, 0] * torch.cos(x), atol=1e-9, rtol=0)
    for ai, xi in zip(a[:, 0].tolist(), x.tolist()):
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if mid - ai * math.cos(mid) < 0 else (lo, mid)
        assert abs(xi - lo) < 1e-9


def test_converged_samples_are_frozen():
    # sample 0 converges at once (a = 0), sample 1 needs many Picard iterations
    a = torch.tensor([0.0, 0.8], dtype=D)[:, None]
    calls = []

    def f(y):
        calls.append(y.clone())
        return a * torch.cos(y)

    eq, _ = _field_eq(f, torch.zeros(2, 1, dtype=D), 1.0)
    res = get_root_finder("fixed_point").solve(eq, torch.zeros(2, 1, dtype=D), _tol(), Stats())
    assert res.ok and res.iterations > 10
    # after the first sample converged its value never changed again
    assert all(float(c[0, 0]) == 0.0 for c in calls)


def test_picard_divergence_is_detected_newton_converges():
    # x = 5 x + 1: |G'| = 5 > 1, Picard diverges; the root is -1/4
    eq, _ = _field_eq(lambda y: 5 * y + 1, torch.zeros(2, 1, dtype=D), 1.0)
    res = get_root_finder("fixed_point").solve(eq, torch.zeros(2, 1, dtype=D), _tol(), Stats())
    assert not res.ok and "diverged" in res.reason and res.iterations < 10
    stats = Stats()
    res = get_root_finder("newton").solve(eq, torch.zeros(2, 1, dtype=D), _tol(), stats)
    assert res.ok and torch.allclose(res.x, torch.full((2, 1), -0.25, dtype=D), atol=1e-14)
    assert stats.n_jac_evals == 1 and stats.n_linear_solves == res.iterations


def test_max_iters_failure_is_reported():
    a = torch.tensor([[0.99]], dtype=D)
    eq, _ = _field_eq(lambda y: a * torch.cos(y), torch.zeros(1, 1, dtype=D), 1.0)
    res = solvers.FixedPoint(max_iters=5).solve(eq, torch.zeros(1, 1, dtype=D), _tol(), Stats())
    assert not res.ok and "not converged in 5 iterations" in res.reason and res.iterations == 5


def test_anderson_beats_picard_on_slow_contraction():
    torch.manual_seed(0)
    n = 12
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=D))
    A = Q @ torch.diag(torch.linspace(0.1, 0.9, n, dtype=D)) @ Q.T  # symmetric, spectral radius 0.9
    b = torch.randn(4, n, dtype=D)
    eq, _ = _field_eq(lambda y: y @ A.T, b, 1.0)
    exact = torch.linalg.solve(torch.eye(n, dtype=D) - A, b.T).T
    out = {}
    for name in ("fixed_point", "anderson"):
        res = get_root_finder(name, max_iters=2000).solve(eq, torch.zeros_like(b), _tol(1e-10, 1e-12), Stats())
        assert res.ok
        assert torch.allclose(res.x, exact, atol=1e-8)
        out[name] = res.iterations
    assert out["anderson"] * 3 < out["fixed_point"]


def test_gmres_matches_dense_solve():
    torch.manual_seed(1)
    B, n = 3, 30
    M = torch.eye(n, dtype=D) + 0.3 * torch.randn(B, n, n, dtype=D) / math.sqrt(n)
    b = torch.randn(B, n, dtype=D)
    x = gmres(lambda v: (M @ v[:, :, None])[:, :, 0], b, rtol=1e-12, restart=30, max_restarts=3)
    assert torch.allclose(x, torch.linalg.solve(M, b), atol=1e-9)


def test_per_sample_jacobian_matches_autograd():
    torch.manual_seed(2)
    W = torch.randn(4, 4, dtype=D)
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    fx = torch.tanh(x @ W.T)
    J = per_sample_jacobian(fx, x)
    for b in range(3):
        ref = torch.autograd.functional.jacobian(lambda v: torch.tanh(v @ W.T), x[b].detach())
        assert torch.allclose(J[b], ref, atol=1e-14)


def test_newton_whole_batch_mode_and_complex_view():
    # per_sample=False: one dense Jacobian of the whole (2, 3) state; complex states as pairs
    lam = torch.tensor([[-1 + 2j, -3 + 0.5j, 1j], [2 - 1j, -0.5j, -4 + 0j]], dtype=torch.complex128)
    c = torch.ones(2, 3, dtype=torch.complex128)
    view = BatchView(c, per_sample=False)
    eq = StageEquation(lambda t, y: lam * y, torch.tensor(0.0, dtype=D), c, 0.1, view)
    res = solvers.Newton(per_sample=False).solve(eq, view.flat(c), _tol(), Stats())
    assert res.ok and view.B == 1
    assert torch.allclose(view.state(res.x), c / (1 - 0.1 * lam), atol=1e-13)


def test_bad_root_finder_arguments():
    with pytest.raises(ValueError, match="root_finder"):
        get_root_finder("broyden")
    with pytest.raises(ValueError, match="damping"):
        get_root_finder("newton", damping=0.5)
    with pytest.raises(ValueError, match="damping"):
        solvers.FixedPoint(damping=1.5)
    with pytest.raises(ValueError, match="max_iters"):
        solvers.Anderson(max_iters=0)
    with pytest.raises(ValueError, match="root-finder object"):
        get_root_finder(solvers.Newton(), max_iters=3)


def _cubic(k):
    return lambda y: -k * y - y**3


def test_newton_reuses_jacobian_across_gamma_and_refactors_lu():
    # two stage equations sharing a key (and a per-solve cache): one Jacobian of f serves
    # both, I - gamma J is refactorised for the new gamma; both roots are exact
    k = torch.tensor([[50.0, 20.0], [200.0, 30.0], [20.0, 80.0]], dtype=D)
    cache, stats = {}, Stats()
    c1 = torch.tensor([[1.0, -0.5], [0.3, 1.0], [-1.0, 0.7]], dtype=D)
    for c, gamma in ((c1, 0.1), (c1 * 1.01, 0.13)):
        eq, view = _field_eq(_cubic(k), c, gamma, key="stage")
        res = solvers.Newton().solve(eq, view.flat(c), _tol(), stats, cache)
        assert res.ok
        x = res.x
        assert torch.allclose(x, view.flat(c) + gamma * (-k * x - x**3), atol=1e-9, rtol=0)  # the root
        assert cache["newton_jac"].gamma_lu == gamma
    assert stats.n_jac_evals == 1
    # without a key (e.g. the transposed systems of the backward pass) nothing is shared
    stats = Stats()
    for c, gamma in ((c1, 0.1), (c1 * 1.01, 0.13)):
        eq, view = _field_eq(_cubic(k), c, gamma)
        assert solvers.Newton().solve(eq, view.flat(c), _tol(), stats, cache).ok
    assert stats.n_jac_evals == 2


@pytest.mark.parametrize("gk, what", [(0.4, "slow: refreshed mid-solve"), (0.6, "diverges: retried from x0")])
def test_newton_stale_jacobian_is_refreshed(gk, what):
    # the cached Jacobian belongs to f = +k x, the equation to f = -k x: with the stale
    # Jacobian the iteration multiplies the error by 1 - (1 + gk)/(1 - gk) (-1.33 or -3)
    k, c = 10.0, torch.tensor([[1.0, -2.0]], dtype=D)
    gamma = gk / k
    cache, stats = {}, Stats()
    eq, view = _field_eq(lambda y: k * y, c, gamma, key="stage")
    assert solvers.Newton().solve(eq, view.flat(c), _tol(), stats, cache).ok
    eq, view = _field_eq(lambda y: -k * y, c, gamma, key="stage")
    res = solvers.Newton().solve(eq, view.flat(c), _tol(), stats, cache)
    assert res.ok, what
    assert torch.allclose(res.x, view.flat(c) / (1 + gk), atol=1e-12, rtol=0)
    assert stats.n_jac_evals == 2


def test_newton_new_step_drops_a_jacobian_older_than_a_rejected_step():
    k, c = 10.0, torch.tensor([[1.0, -2.0]], dtype=D)
    cache, stats, newton = {}, Stats(), solvers.Newton()
    eq, view = _field_eq(lambda y: -k * y, c, 0.05, key="stage")
    y0, y1 = c.clone(), c.clone()
    newton.new_step(cache, y0)  # nothing cached yet: no-op
    assert newton.solve(eq, view.flat(c), _tol(), stats, cache).ok
    js = cache["newton_jac"]
    newton.new_step(cache, y0)  # the step from y0 is retried, but its Jacobian is from this attempt: kept
    assert js.J is not None
    newton.new_step(cache, y1)  # an accepted step: a new step starts, the Jacobian is kept
    assert js.J is not None and not js.fresh_in_step
    newton.new_step(cache, y1)  # rejected, and its Jacobian came from an earlier step: dropped
    assert js.J is None
    assert newton.solve(eq, view.flat(c), _tol(), stats, cache).ok and stats.n_jac_evals == 2


def test_anderson_survives_singular_least_squares_in_float32():
    """One unknown per sample: Anderson's history matrix has rank one, exactly singular in
    float32 without a shift above the dtype's resolution. It must still converge."""
    y0 = torch.linspace(-2.0, 2.0, 64, dtype=torch.float32)[:, None]  # (64, 1)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    f = lambda tt, y: -torch.sin(3 * y)  # noqa: E731
    ys = solvers.odeint(f, y0, t, method="implicit_euler", options=dict(step_size=0.25, root_finder="anderson"))
    ref = solvers.odeint(f, y0.double(), t, method="implicit_euler", options=dict(step_size=0.25, root_finder="newton"))
    assert torch.isfinite(ys).all()
    assert float((ys[-1].double() - ref[-1]).abs().max()) < 1e-4
