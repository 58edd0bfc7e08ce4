"""Newton–Krylov's field preconditioner: the parabolic fields' ``implicit_preconditioner``
against dense references, preconditioned GMRES, the quasi-Newton ``linear_solver``, and that
neither changes what is solved (roots, IFT gradients) or lets a failure pass as converged."""

import pytest
import torch
import torch.nn.functional as F

import solvers
from odenet import ODEBlock, ParabolicConvField, ParabolicMLPField
from odenet.fields import ConvField
from solvers import NewtonKrylov, RootFinderError
from solvers._krylov import gmres
from _checks import big_weights, central_difference

D = torch.float64


def _big_weights(module, scale=1.0, seed=0):
    return big_weights(module, scale, seed)


def _matrix(apply, n):
    """The dense matrix of a linear map on flat vectors of length ``n`` (columns = images of e_j)."""
    return torch.stack([apply(e) for e in torch.eye(n, dtype=D)], dim=1)


def _circular_conv_matrix(w, size):
    """Cross-correlation with ``w`` on a periodic grid ``size`` (``F.pad`` circular, an
    independent construction from the preconditioner's DFT), as a dense matrix."""
    cin, p = w.shape[1], w.shape[-1] // 2

    def apply(e):
        x = e.view(1, cin, *size)
        return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), w).reshape(-1)

    return _matrix(apply, cin * size[0] * size[1])


@pytest.mark.parametrize("per_sample", [False, True])
def test_conv_preconditioner_is_the_constant_coefficient_inverse_on_the_padded_periodic_grid(float64_default, per_sample):
    f = _big_weights(ParabolicConvField(3, hidden=5, time="concat", expansion=0.5), scale=0.5, seed=1)
    B, C, H, W = 2, 3, 5, 4
    x = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(0.3)
    gamma = torch.tensor([[[[0.3]]], [[[0.7]]]]) if per_sample else 0.4
    pre = f.implicit_preconditioner(t, x, gamma)
    # reference: d = mean tanh'(K x + b(t)); P = I + g (d Kc^T Kc - (Ac - Ac^T) - nu I) on the
    # (H + 2) x (W + 2) periodic grid; the image embedded at the top left, the result cropped
    with torch.no_grad():
        pre_act = F.conv2d(x, f.conv.weight, f.conv.bias, padding=1) + t * f.hidden_bias_t
        d = (1 - torch.tanh(pre_act) ** 2).mean()
        size = (H + 2, W + 2)
        Kc = _circular_conv_matrix(f.conv.weight, size)
        Ac = _circular_conv_matrix(f.skew_conv.weight, size)
        N = Kc.shape[1]
        mask = torch.zeros(C, *size, dtype=torch.bool)
        mask[:, :H, :W] = True
        idx = mask.reshape(-1).nonzero().squeeze(1)
        v = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(3))
        got, got_t = pre.solve(v), pre.solve_transpose(v)
        for b in range(B):
            g = float(gamma[b]) if per_sample else gamma
            P = torch.eye(N) + g * (d * Kc.T @ Kc - (Ac - Ac.T) - 0.5 * torch.eye(N))
            Pinv = torch.linalg.inv(P)[idx][:, idx]  # restrict . P^-1 . extend
            torch.testing.assert_close(got[b].reshape(-1), Pinv @ v[b].reshape(-1), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got_t[b].reshape(-1), Pinv.T @ v[b].reshape(-1), rtol=1e-10, atol=1e-12)


def test_mlp_preconditioner_is_the_exact_inverse_where_every_slope_is_one(float64_default):
    # relu with every pre-activation positive: D = I, so P = I - gamma J_f exactly (J_f by autograd)
    f = _big_weights(ParabolicMLPField(5, hidden=7, activation="relu", expansion=-0.3), seed=4)
    with torch.no_grad():
        f.linear.bias.fill_(50.0)
    x = 0.1 * torch.randn(3, 5, generator=torch.Generator().manual_seed(5))
    gamma = 0.6
    J = torch.autograd.functional.jacobian(lambda z: f(0.0, z.view(1, 5)).reshape(5), x[0])
    M = torch.eye(5) - gamma * J
    pre = f.implicit_preconditioner(0.0, x, gamma)
    v = torch.randn(3, 5, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(pre.solve(v), torch.linalg.solve(M, v.T).T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pre.solve_transpose(v), torch.linalg.solve(M.T, v.T).T, rtol=1e-10, atol=1e-12)


def test_preconditioner_is_refused_where_the_stage_is_ill_posed(float64_default):
    # gamma * expansion = 1 without a gradient part: P = I - I = 0 is singular
    f = ParabolicMLPField(3, hidden=2, skew=False, expansion=2.0)
    with torch.no_grad():
        f.linear.weight.zero_()
    assert f.implicit_preconditioner(0.0, torch.zeros(2, 3), 0.5) is None


def test_right_preconditioned_gmres_solves_and_reports_the_true_residual(float64_default):
    g = torch.Generator().manual_seed(7)
    n = 12
    A = torch.eye(n) + 0.3 * torch.randn(n, n, generator=g)
    b = torch.randn(3, n, generator=g)
    op = lambda v: v @ A.T  # noqa: E731
    Pinv = torch.linalg.inv(A + 0.05 * torch.randn(n, n, generator=g))  # a close preconditioner
    n_pc = [0]

    def precond(v):
        n_pc[0] += 1
        return v @ Pinv.T

    x, res = gmres(op, b, rtol=1e-10, restart=n, max_restarts=2, return_residual=True, precond=precond)
    exact = torch.linalg.solve(A, b.T).T
    torch.testing.assert_close(x, exact, rtol=1e-8, atol=1e-9)
    true = torch.linalg.vector_norm(b - op(x), dim=1)
    assert (res <= 1e-10 * torch.linalg.vector_norm(b, dim=1) * 1.01).all()
    torch.testing.assert_close(res, true, rtol=0, atol=1e-12)
    x0, _ = gmres(op, b, rtol=1e-10, restart=n, max_restarts=2, return_residual=True)
    assert n_pc[0] < n  # fewer iterations than unpreconditioned (which needs ~n here)
    torch.testing.assert_close(x, x0, rtol=1e-8, atol=1e-9)


def _conv_block(field, **options):
    opts = dict(root_finder="newton_krylov", root_rtol=1e-10, root_atol=1e-12)
    opts.update(options)
    return ODEBlock(field, method="implicit_euler", steps=2, options=opts)


@pytest.mark.parametrize("linear_solver", ["gmres", "preconditioner"])
def test_preconditioned_solve_finds_the_same_root_with_fewer_products(float64_default, linear_solver):
    f = _big_weights(ParabolicConvField(3, hidden=4, expansion=0.5), scale=0.4, seed=8)
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(9))
    plain = _conv_block(f)
    y0 = plain(x)
    s0 = plain.last_stats
    blk = _conv_block(f, preconditioner="field", linear_solver=linear_solver)
    y1 = blk(x)
    s1 = blk.last_stats
    torch.testing.assert_close(y1, y0, rtol=1e-8, atol=1e-9)
    # and each step is a root: y(1) = y(1/2) + h f(y(1)) with y(1/2) from a one-step block
    half = ODEBlock(f, method="implicit_euler", t1=0.5, steps=1,
                    options=dict(root_finder="newton_krylov", root_rtol=1e-10, root_atol=1e-12))
    with torch.no_grad():
        ym = half(x)
        res = y1 - ym - 0.5 * f(torch.tensor(1.0), y1)
    assert res.abs().max() < 1e-8 * (1 + y1.abs().max())
    assert s1.n_precond_evals > 0 and s1.n_root_failures == 0
    assert s1.n_jvp_evals < s0.n_jvp_evals


def test_quasi_newton_steps_need_no_jvps_where_the_preconditioner_is_exact(float64_default):
    # relu with every pre-activation positive: P = I - gamma J_f exactly (an affine field), so
    # the first quasi-Newton step lands on the root and the second confirms it
    f = _big_weights(ParabolicMLPField(5, hidden=7, activation="relu"), seed=4)
    with torch.no_grad():
        f.linear.bias.fill_(50.0)
    y0 = 0.1 * torch.randn(3, 5, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0.0, 1.0])
    # (the constant predictor: the explicit one overshoots to where some pre-activations are
    # negative, and the mean slope there is not 1)
    opts = dict(step_size=0.5, root_finder="newton_krylov", root_rtol=1e-10, root_atol=1e-12, preconditioner="field",
                linear_solver="preconditioner", predictor="constant")
    sol = solvers.solve(f, y0, t, method="implicit_euler", options=opts)
    ref = solvers.solve(f, y0, t, method="implicit_euler", options=dict(step_size=0.5, root_finder="newton", root_rtol=1e-12,
                                                                        root_atol=1e-14))
    torch.testing.assert_close(sol.ys[-1], ref.ys[-1], rtol=1e-9, atol=1e-10)
    assert sol.stats.n_jvp_evals == 0 and sol.stats.n_root_iters == 2 * sol.stats.n_root_solves


@pytest.mark.parametrize("linear_solver", ["gmres", "preconditioner"])
def test_ift_gradient_with_the_preconditioner_matches_finite_differences(float64_default, linear_solver):
    f = _big_weights(ParabolicConvField(2, hidden=2, expansion=1.0, time="concat"), scale=1.0, seed=5)
    block = _conv_block(f, root_rtol=1e-12, root_atol=1e-12, preconditioner="field", linear_solver=linear_solver)
    x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(6), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: block(z), (x,), eps=1e-6, atol=1e-6, nondet_tol=1e-9, fast_mode=True)
    w = f.conv.weight
    loss = lambda: block(x.detach()).square().sum()  # noqa: E731
    g = torch.autograd.grad(loss(), w)[0]
    assert block.last_stats.n_precond_evals > 0
    fd = central_difference(loss, w, (0, 1, 2, 0))
    assert abs(fd - g[0, 1, 2, 0].item()) < 1e-5 * (1 + abs(g[0, 1, 2, 0].item()))


class _BadPreconditioner(torch.nn.Module):
    """A parabolic MLP field whose preconditioner is useless: ``kind`` "zero" (P^-1 = 0) or
    "projector" (P^-1 keeps only the first half of the unknowns)."""

    def __init__(self, kind):
        super().__init__()
        self.f = _big_weights(ParabolicMLPField(6, hidden=8), seed=10)
        self.kind = kind

    def forward(self, t, x):
        return self.f(t, x)

    def implicit_preconditioner(self, t, x, gamma):
        kind = self.kind

        class Pre:
            def solve(self, v):
                if kind == "zero":
                    return torch.zeros_like(v)
                out = v.clone()
                out[..., 3:] = 0
                return out

            solve_transpose = solve

        return Pre()


@pytest.mark.parametrize("kind", ["zero", "projector"])
def test_a_useless_preconditioner_is_never_reported_as_converged(float64_default, kind):
    field = _BadPreconditioner(kind)
    y0 = torch.randn(3, 6, generator=torch.Generator().manual_seed(11))
    opts = dict(root_finder="newton_krylov", root_rtol=1e-8, root_atol=1e-10, preconditioner="field",
                linear_solver="preconditioner", max_iters=15)
    with pytest.raises(solvers.SolverError):
        solvers.solve(field, y0, torch.tensor([0.0, 1.0]), method="implicit_euler", options=dict(opts, step_size=0.5))
    # GMRES with the same preconditioner: a zero P^-1 makes no progress (reported); the
    # projector loses half the space: GMRES must still solve or report, never fake it
    opts["linear_solver"] = "gmres"
    try:
        sol = solvers.solve(field, y0, torch.tensor([0.0, 1.0]), method="implicit_euler",
                            options=dict(opts, step_size=0.5))
    except solvers.SolverError:
        return
    y1 = sol.ys[-1]
    ref = solvers.solve(field.f, y0, torch.tensor([0.0, 1.0]), method="implicit_euler",
                        options=dict(step_size=0.5, root_finder="newton", root_rtol=1e-10, root_atol=1e-12)).ys[-1]
    torch.testing.assert_close(y1, ref, rtol=1e-6, atol=1e-7)


def test_option_values_are_validated_by_name():
    with pytest.raises(ValueError, match="`preconditioner` must be one of"):
        NewtonKrylov(preconditioner="fft")
    with pytest.raises(ValueError, match="`linear_solver` must be one of"):
        NewtonKrylov(linear_solver="cg")
    with pytest.raises(ValueError, match="`linear_solver='preconditioner'`.*needs preconditioner='auto' or 'field'"):
        NewtonKrylov(linear_solver="preconditioner")
    f = ParabolicMLPField(3, hidden=4)
    y0 = torch.zeros(2, 3)
    t = torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="option `preconditioner` applies to root_finder='newton_krylov'"):
        solvers.solve(f, y0, t, method="implicit_euler", options=dict(step_size=0.5, root_finder="anderson", preconditioner="auto"))
    with pytest.raises(ValueError, match="option `linear_solver` applies to root_finder='newton_krylov'"):
        solvers.solve(f, y0, t, method="implicit_euler", options=dict(step_size=0.5, root_finder="newton", linear_solver="gmres"))
    with pytest.raises(ValueError, match="`preconditioner` must be one of"):
        solvers.solve(f, y0, t, method="implicit_euler", options=dict(step_size=0.5, root_finder="auto", preconditioner=1))


def test_field_without_a_preconditioner(float64_default):
    f = ConvField(2, hidden=3)
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(12))
    with pytest.raises(ValueError, match="preconditioner='field'.*ConvField"):
        _conv_block(f, preconditioner="field")(x)
    # "auto": the field has none, so the solve runs unpreconditioned (GMRES), as without the option
    blk = _conv_block(f, preconditioner="auto", linear_solver="preconditioner")
    y = blk(x)
    assert blk.last_stats.n_precond_evals == 0 and blk.last_stats.n_jvp_evals > 0
    torch.testing.assert_close(y, _conv_block(f)(x), rtol=1e-8, atol=1e-9)
    with pytest.raises(ValueError, match="preconditioner='field'.*RadauIIA|preconditioner='field'.*coupled"):
        solvers.solve(ParabolicMLPField(3), torch.zeros(2, 3), torch.tensor([0.0, 1.0]), method="radauIIA3",
                      options=dict(step_size=0.5, root_finder="newton_krylov", preconditioner="field"))
