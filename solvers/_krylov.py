"""Newton–Krylov: inexact Newton whose steps are solved matrix-free by batched GMRES."""

from __future__ import annotations

import torch

from ._rootbase import AbstractRootFinder, _Monitor, _positive_float, _positive_int, empty_result, work_dtype

__all__ = ["NewtonKrylov", "gmres"]

class NewtonKrylov(AbstractRootFinder):
    """Inexact Newton, each step solved matrix-free by restarted GMRES with JVPs.

    For large states (conv feature maps) where a dense Jacobian is out of reach. Each
    sample has its own Krylov space (batched Arnoldi); the linear solve stops at a relative
    residual ``forcing`` per sample.

    ``jvp="autograd"`` (default) forms ``J v`` exactly by double backward (about two
    backward passes of the field each); ``jvp="finite_difference"`` by a forward difference
    ``(G(x + eps v) - G(x)) / eps`` with the per-sample step ``eps = sqrt(u (1 + |x|)) / |v|``
    (``u`` the unit roundoff; Knoll & Keyes 2004): one evaluation of the field per product,
    accurate to about ``sqrt(u)`` relative, which an inexact Newton iteration with
    ``forcing >= 1e-3`` does not notice (the residual the convergence test judges is always
    the exact ``G(x) - x``; gradients never use these products).

    Globalised by a per-sample backtracking line search on the residual norm: a sample
    whose full Newton step does not reduce ``|G(x) - x|`` by the Armijo factor
    ``1 - 1e-4 * alpha`` halves its step (at most ``max_backtracks`` times; one batched
    evaluation of ``G`` per halving, only while some sample needs it). Plain Newton
    overshoots where the Jacobian changes fast (saturating activations at large step
    sizes) and can diverge even on a strongly monotone equation; the line search makes
    each iteration reduce the residual instead.

    ``preconditioner``: ``"none"`` (default), ``"auto"`` or ``"field"``: right-precondition
    every GMRES solve of an implicit stage (forward, and the transposed one of its gradient)
    by the field's ``implicit_preconditioner(t, y, gamma)`` (see
    :func:`solvers._ift.field_preconditioner`; odenet's parabolic fields offer one), built
    once per solve and step factor, at the first stage's initial guess. ``"auto"`` runs
    unpreconditioned where the field has none; ``"field"`` raises ``ValueError`` there.
    Right preconditioning keeps the true residual in every test (the forcing, the trust
    test of the Newton step, the transposed solve's check), so convergence is judged as
    without it.

    ``linear_solver``: ``"gmres"`` (default) or ``"preconditioner"``: each Newton step is
    ``P^-1 (G(x) - x)``, no GMRES and no JVPs (a quasi-Newton iteration; see
    :meth:`_solve_quasi` for its convergence test and its hand-over to GMRES steps where
    ``P`` contracts poorly). Needs ``preconditioner`` ``"auto"`` or ``"field"``; without a
    field preconditioner (``"auto"``) the steps are GMRES ones. ``predictor="auto"`` picks
    the explicit predictor for it. The gradient's transposed solve is GMRES either way.
    """

    name = "newton_krylov"
    backward_kind = "krylov"
    explicit_predictor = False
    #: how Jacobian-vector products are formed
    JVP_MODES = ("autograd", "finite_difference")
    #: where the GMRES preconditioner comes from
    PRECONDITIONERS = ("none", "auto", "field")
    #: how the Newton step's linear system is solved
    LINEAR_SOLVERS = ("gmres", "preconditioner")

    def __init__(self, max_iters: int = 20, restart: int = 20, max_restarts: int = 2, forcing: float = 1e-2,
                 divergence_rate: float = 2.0, max_backtracks: int = 8, jvp: str = "autograd",
                 preconditioner: str = "none", linear_solver: str = "gmres"):
        super().__init__(max_iters, divergence_rate)
        if jvp not in self.JVP_MODES:
            raise ValueError(f"`jvp` must be one of {self.JVP_MODES}, got {jvp!r}")
        self.jvp = jvp
        if not isinstance(preconditioner, str) or preconditioner not in self.PRECONDITIONERS:
            raise ValueError(f"`preconditioner` must be one of {self.PRECONDITIONERS}, got {preconditioner!r}")
        self.preconditioner = preconditioner
        if not isinstance(linear_solver, str) or linear_solver not in self.LINEAR_SOLVERS:
            raise ValueError(f"`linear_solver` must be one of {self.LINEAR_SOLVERS}, got {linear_solver!r}")
        if linear_solver == "preconditioner" and preconditioner == "none":
            raise ValueError("`linear_solver='preconditioner'` steps by the field's preconditioner: it needs "
                             "preconditioner='auto' or 'field', got preconditioner='none'")
        self.linear_solver = linear_solver
        # predictor="auto": the explicit step for the quasi-Newton iteration (from the bounded
        # constant guess its first steps overshoot and the line search backtracks)
        self.explicit_predictor = linear_solver == "preconditioner"
        self.restart = _positive_int("restart", restart)
        self.max_restarts = _positive_int("max_restarts", max_restarts)
        self.forcing = _positive_float("forcing", forcing, 1.0)
        if isinstance(max_backtracks, bool) or not isinstance(max_backtracks, int) or max_backtracks < 0:
            raise ValueError(f"`max_backtracks` must be an int >= 0, got {max_backtracks!r}")
        self.max_backtracks = max_backtracks

    def _line_search(self, eq, x, dx, rnorm, active=None):
        """Per-sample backtracking: the largest ``alpha = 2^-j`` with sufficient decrease.

        ``active``: ``(B,)`` bool, the samples still iterating (the others have ``dx = 0`` and
        cannot decrease their residual: they must not keep the search halving)."""
        alpha = torch.ones(x.shape[0], dtype=rnorm.dtype, device=x.device)
        for _ in range(self.max_backtracks):
            trial = x + alpha[:, None] * dx
            g_trial = eq.G(trial)
            tnorm = torch.linalg.vector_norm((g_trial - trial).to(rnorm.dtype), dim=1)
            bad = ~(tnorm <= (1 - 1e-4 * alpha) * rnorm)  # NaN counts as bad
            if active is not None:
                bad = bad & active
            if not bool(bad.any()):  # one host sync per trial
                # the step taken is this trial's (samples not iterating have dx = 0 and
                # keep x): G at the new iterate is known already
                return (alpha[:, None] * dx).to(x.dtype), g_trial
            alpha = torch.where(bad, alpha * 0.5, alpha)
        return (alpha[:, None] * dx).to(x.dtype), None

    def solve(self, eq, x0, tol, stats, cache=None):
        if x0.shape[1] == 0:
            return empty_result(x0)
        x = x0
        w = work_dtype(x.dtype)  # GMRES in float32 for half-precision states
        pre = getattr(eq, "pre", None)  # (P^-1, P^-T) in the flat view, or None
        k0 = 0
        if pre is not None and self.linear_solver == "preconditioner":
            res, k0, x = self._solve_quasi(eq, x, tol, stats, pre[0], w)
            if res is not None:
                return res
        mon = _Monitor(x.shape[0], x.device, self.divergence_rate)
        k = k0
        g_known = None  # G(x), when the line search evaluated it at the new iterate
        for k in range(k0 + 1, self.max_iters + 1):
            g, jvp = eq.linearize(x) if self.jvp == "autograd" else _fd_linearize(eq, x, g_known)
            r = g - x

            def op(v, jvp=jvp):
                stats.n_jvp_evals += 1
                return (v - jvp(v.to(x.dtype))).to(w)

            rw = r.to(w)
            dx, lres = gmres(op, rw, rtol=self.forcing, restart=self.restart, max_restarts=self.max_restarts,
                             return_residual=True, precond=None if pre is None else _counted(pre[0], stats, w))
            stats.n_linear_solves += 1
            # the Newton step is trustworthy only if GMRES solved for it: its residual fell
            # below half the nonlinear one (no progress at all: a singular Newton matrix)
            lin_ok = lres <= 0.5 * torch.linalg.vector_norm(rw, dim=1)
            act = mon.active[:, None]
            dx = torch.where(act, dx, torch.zeros_like(dx)).to(x.dtype)
            # the monitor judges convergence by the full Newton step (an estimate of the
            # distance to the root), not by the possibly shortened step actually taken, so it
            # decides before the line search: when no sample iterates any more, the full step
            # is taken without one (its trial evaluation would be thrown away)
            x_full = x + dx
            more = mon.update(dx, r, tol.scale(x_full), lin_ok)
            if not more:
                x = x_full
                break
            step, g_known = (self._line_search(eq, x, dx, torch.linalg.vector_norm(rw, dim=1), mon.active)
                             if self.max_backtracks else (dx, None))
            x = x + step
        return mon.result(x, k, self.max_iters)

    #: the quasi-Newton phase of ``linear_solver="preconditioner"`` hands over to GMRES Newton
    #: steps when its contraction rate exceeds this, or after this many iterations
    QUASI_MAX_RATE, QUASI_MAX_ITERS = 0.3, 4

    def _solve_quasi(self, eq, x, tol, stats, pinv, w):
        """``linear_solver="preconditioner"``: the quasi-Newton iteration ``x += P^-1 (G(x) - x)``.

        One evaluation of ``G`` (the line search's trial, reused) and one application of
        ``P^-1`` per iteration, no JVPs. The update ``P^-1 r`` estimates the error only as
        well as ``P`` approximates the Newton matrix, and the iteration converges linearly,
        so a sample converges only when three tests pass at its current iterate: the
        update-based estimate of the remaining error (as for Newton), the update itself at
        most one tolerance, and the residual ``|G(x) - x|`` at most one tolerance (a ``P``
        that loses part of the space, or is zero, cannot fake convergence); its last update
        is then taken. Where ``P`` is a poor approximation (the field's slopes far from their
        mean) the iteration contracts slowly: when some sample's rate exceeds
        :attr:`QUASI_MAX_RATE`, or after :attr:`QUASI_MAX_ITERS` iterations, it stops and the
        caller continues from the last iterate with preconditioned GMRES Newton steps.

        Returns ``(result, iterations, x)``: ``result`` ``None`` when handing over at ``x``.
        """
        mon = _Monitor(x.shape[0], x.device, self.divergence_rate, need_residual=True, update_limit=1.0)
        k = 0
        g = eq.G(x)
        for k in range(1, min(self.max_iters, self.QUASI_MAX_ITERS) + 1):
            r = g - x
            rw = r.to(w)
            stats.n_precond_evals += 1
            dx = torch.where(mon.active[:, None], pinv(rw).to(w), torch.zeros_like(rw)).to(x.dtype)
            if not mon.update(dx, r, tol.scale(x + dx)):
                x = x + dx
                res = mon.result(x, k, self.max_iters)
                if res.ok or k >= self.max_iters:
                    return res, k, x
                break  # a sample diverged: Newton steps may still find its root
            if mon.max_active_rate() > self.QUASI_MAX_RATE or k == self.QUASI_MAX_ITERS:
                break  # hand over from the last iterate whose residual is known
            step, g = self._line_search(eq, x, dx, torch.linalg.vector_norm(rw, dim=1), mon.active) \
                if self.max_backtracks else (dx, None)
            x = x + step
            if g is None:  # no line search, or no sufficient decrease in max_backtracks halvings
                g = eq.G(x)
        return None, k, x


def _counted(apply, stats, w):
    """``apply`` (a preconditioner's ``P^-1`` or ``P^-T`` in the flat view) in dtype ``w``,
    counted into ``stats.n_precond_evals``."""

    def run(v):
        stats.n_precond_evals += 1
        return apply(v).to(w)

    return run


def _fd_linearize(eq, x, g=None):
    """``G(x)`` (``g`` when known) and ``v -> J_G(x) v`` by forward differences (one ``G``
    evaluation each)."""
    g = eq.G(x) if g is None else g
    u = torch.finfo(x.dtype).eps
    xn = torch.linalg.vector_norm(x, dim=1, keepdim=True)

    def jvp(v):
        vn = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        eps = torch.sqrt(u * (1 + xn)) / vn.clamp_min(torch.finfo(x.dtype).tiny)
        return (eq.G(x + eps * v) - g) / eps

    return g, jvp


def gmres(op, b: torch.Tensor, rtol: float = 1e-2, restart: int = 20, max_restarts: int = 2, return_residual: bool = False,
          precond=None):
    """Batched restarted GMRES: solve ``op(x) = b`` for each row of ``b`` (``(B, n)``).

    ``precond``: ``v -> P^{-1} v`` with ``P`` an approximation of ``op`` (right
    preconditioning: GMRES runs on ``op(P^{-1} u) = b`` and returns ``x = P^{-1} u``), one
    application per iteration; the preconditioned basis vectors ``P^{-1} v_j`` are kept (as
    in flexible GMRES, Saad 1993), so ``x`` is their combination and costs no further
    application. The residual it minimises and reports is still the true one,
    ``|b - op(x)|``, so a poor ``P`` costs iterations, never accuracy.

    Every row has its own Krylov space; ``op`` is applied to all rows at once. Stops when
    every row's residual is at most ``rtol * |b_row|`` (or after ``max_restarts`` cycles;
    the caller's outer iteration judges the result). With ``return_residual`` it returns
    ``(x, res)``, ``res`` the ``(B,)`` residual norms ``|b - op(x)|`` (from the Arnoldi
    relation, no extra application of ``op``).

    The small least-squares problem is kept triangular by Givens rotations (Saad & Schultz
    1986), updated in ``O(j)`` elementwise operations per iteration and solved by back
    substitution: no LAPACK call, so the result is bitwise reproducible (a batched
    ``lstsq`` can differ in the last bits between calls with the same input).
    """
    B, n = b.shape
    x = torch.zeros_like(b)
    bnorm = torch.linalg.vector_norm(b, dim=1)  # (B,)
    target = rtol * bnorm
    m = min(restart, n)
    tiny = torch.finfo(b.dtype).tiny
    resid = bnorm
    for cycle in range(max_restarts):
        r = b - op(x) if cycle else b
        beta = torch.linalg.vector_norm(r, dim=1)  # (B,)
        resid = beta
        if bool((beta <= target).all()):
            break
        V = [r / beta.clamp_min(tiny)[:, None]]
        Z = V if precond is None else []  # the directions x is built from: P^-1 v_j
        R = []  # R[j][i]: entry (i, j) of the rotated Hessenberg matrix, (B,) each
        cs, sn = [], []
        g = [beta]  # rotated right-hand side beta e1
        for j in range(m):
            if precond is not None:
                Z.append(precond(V[j]))
            w = op(Z[j])
            col = []
            for i in range(j + 1):  # modified Gram-Schmidt, per row
                hij = (w * V[i]).sum(dim=1)
                col.append(hij)
                w = w - hij[:, None] * V[i]
            hn = torch.linalg.vector_norm(w, dim=1)
            V.append(w / hn.clamp_min(tiny)[:, None])
            for i in range(j):  # earlier rotations
                a, c = col[i], col[i + 1]
                col[i], col[i + 1] = cs[i] * a + sn[i] * c, cs[i] * c - sn[i] * a
            d = torch.sqrt(col[j] * col[j] + hn * hn)
            safe = d > 0
            cj = torch.where(safe, col[j] / d.clamp_min(tiny), torch.ones_like(d))
            sj = torch.where(safe, hn / d.clamp_min(tiny), torch.zeros_like(d))
            col[j] = torch.where(safe, d, col[j])
            cs.append(cj)
            sn.append(sj)
            # a zero column (d = 0: the Hessenberg matrix is singular, e.g. op = 0) leaves the
            # residual where it was; it must not read as an exact ("lucky") breakdown
            g.append(torch.where(safe, -sj * g[j], g[j]))
            g[j] = torch.where(safe, cj * g[j], torch.zeros_like(g[j]))
            R.append(col)
            res = g[j + 1].abs()
            if bool((res <= target).all()):
                break
        k = len(R)
        y = [None] * k  # back substitution R y = g
        for i in range(k - 1, -1, -1):
            acc = g[i]
            for jj in range(i + 1, k):
                acc = acc - R[jj][i] * y[jj]
            piv = R[i][i]
            y[i] = torch.where(piv != 0, acc / torch.where(piv != 0, piv, torch.ones_like(piv)), torch.zeros_like(acc))
        for i in range(k):
            x = x + y[i][:, None] * Z[i]
        resid = res
        if bool((res <= target).all()):
            # converged by the Arnoldi residual (equal to the true one in exact arithmetic):
            # no restart cycle just to recompute it (one more application of ``op``)
            break
    return (x, resid) if return_residual else x
