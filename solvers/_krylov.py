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
    """

    name = "newton_krylov"
    backward_kind = "krylov"
    explicit_predictor = False
    #: how Jacobian-vector products are formed
    JVP_MODES = ("autograd", "finite_difference")

    def __init__(self, max_iters: int = 20, restart: int = 20, max_restarts: int = 2, forcing: float = 1e-2,
                 divergence_rate: float = 2.0, max_backtracks: int = 8, jvp: str = "autograd"):
        super().__init__(max_iters, divergence_rate)
        if jvp not in self.JVP_MODES:
            raise ValueError(f"`jvp` must be one of {self.JVP_MODES}, got {jvp!r}")
        self.jvp = jvp
        self.restart = _positive_int("restart", restart)
        self.max_restarts = _positive_int("max_restarts", max_restarts)
        self.forcing = _positive_float("forcing", forcing, 1.0)
        if isinstance(max_backtracks, bool) or not isinstance(max_backtracks, int) or max_backtracks < 0:
            raise ValueError(f"`max_backtracks` must be an int >= 0, got {max_backtracks!r}")
        self.max_backtracks = max_backtracks

    def _line_search(self, eq, x, dx, rnorm):
        """Per-sample backtracking: the largest ``alpha = 2^-j`` with sufficient decrease."""
        alpha = torch.ones(x.shape[0], dtype=rnorm.dtype, device=x.device)
        for _ in range(self.max_backtracks):
            trial = x + alpha[:, None] * dx
            g_trial = eq.G(trial)
            tnorm = torch.linalg.vector_norm((g_trial - trial).to(rnorm.dtype), dim=1)
            bad = ~(tnorm <= (1 - 1e-4 * alpha) * rnorm)  # NaN counts as bad
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
        mon = _Monitor(x.shape[0], x.device, self.divergence_rate)
        k = 0
        g_known = None  # G(x), when the line search evaluated it at the new iterate
        for k in range(1, self.max_iters + 1):
            g, jvp = eq.linearize(x) if self.jvp == "autograd" else _fd_linearize(eq, x, g_known)
            r = g - x

            def op(v, jvp=jvp):
                stats.n_jvp_evals += 1
                return (v - jvp(v.to(x.dtype))).to(w)

            rw = r.to(w)
            dx, lres = gmres(op, rw, rtol=self.forcing, restart=self.restart, max_restarts=self.max_restarts, return_residual=True)
            stats.n_linear_solves += 1
            # the Newton step is trustworthy only if GMRES solved for it: its residual fell
            # below half the nonlinear one (no progress at all: a singular Newton matrix)
            lin_ok = lres <= 0.5 * torch.linalg.vector_norm(rw, dim=1)
            act = mon.active[:, None]
            dx = torch.where(act, dx, torch.zeros_like(dx)).to(x.dtype)
            # the monitor judges convergence by the full Newton step (an estimate of the
            # distance to the root), not by the possibly shortened step actually taken
            step, g_known = (self._line_search(eq, x, dx, torch.linalg.vector_norm(rw, dim=1))
                             if self.max_backtracks else (dx, None))
            x_new = x + step
            more = mon.update(dx, r, tol.scale(x_new), lin_ok)
            x = x_new
            if not more:
                break
        return mon.result(x, k, self.max_iters)


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


def gmres(op, b: torch.Tensor, rtol: float = 1e-2, restart: int = 20, max_restarts: int = 2, return_residual: bool = False):
    """Batched restarted GMRES: solve ``op(x) = b`` for each row of ``b`` (``(B, n)``).

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
        R = []  # R[j][i]: entry (i, j) of the rotated Hessenberg matrix, (B,) each
        cs, sn = [], []
        g = [beta]  # rotated right-hand side beta e1
        for j in range(m):
            w = op(V[j])
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
            x = x + y[i][:, None] * V[i]
        resid = res
    return (x, resid) if return_residual else x
