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

    def __init__(self, max_iters: int = 20, restart: int = 20, max_restarts: int = 2, forcing: float = 1e-2,
                 divergence_rate: float = 2.0, max_backtracks: int = 8):
        super().__init__(max_iters, divergence_rate)
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
            tnorm = torch.linalg.vector_norm((eq.G(trial) - trial).to(rnorm.dtype), dim=1)
            bad = ~(tnorm <= (1 - 1e-4 * alpha) * rnorm)  # NaN counts as bad
            if not bool(bad.any()):  # one host sync per trial
                break
            alpha = torch.where(bad, alpha * 0.5, alpha)
        return (alpha[:, None] * dx).to(x.dtype)

    def solve(self, eq, x0, tol, stats, cache=None):
        if x0.shape[1] == 0:
            return empty_result(x0)
        x = x0
        w = work_dtype(x.dtype)  # GMRES in float32 for half-precision states
        mon = _Monitor(x.shape[0], x.device, self.divergence_rate)
        k = 0
        for k in range(1, self.max_iters + 1):
            g, jvp = eq.linearize(x)
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
            step = self._line_search(eq, x, dx, torch.linalg.vector_norm(rw, dim=1)) if self.max_backtracks else dx
            x_new = x + step
            more = mon.update(dx, r, tol.scale(x_new), lin_ok)
            x = x_new
            if not more:
                break
        return mon.result(x, k, self.max_iters)


def gmres(op, b: torch.Tensor, rtol: float = 1e-2, restart: int = 20, max_restarts: int = 2, return_residual: bool = False):
    """Batched restarted GMRES: solve ``op(x) = b`` for each row of ``b`` (``(B, n)``).

    Every row has its own Krylov space; ``op`` is applied to all rows at once. Stops when
    every row's residual is at most ``rtol * |b_row|`` (or after ``max_restarts`` cycles;
    the caller's outer iteration judges the result). With ``return_residual`` it returns
    ``(x, res)``, ``res`` the ``(B,)`` residual norms ``|b - op(x)|`` (from the Arnoldi
    relation, no extra application of ``op``).
    """
    B, n = b.shape
    x = torch.zeros_like(b)
    bnorm = torch.linalg.vector_norm(b, dim=1)  # (B,)
    target = rtol * bnorm
    m = min(restart, n)
    resid = bnorm
    for cycle in range(max_restarts):
        r = b - op(x) if cycle else b
        beta = torch.linalg.vector_norm(r, dim=1)  # (B,)
        resid = beta
        if bool((beta <= target).all()):
            break
        V = [r / beta.clamp_min(torch.finfo(b.dtype).tiny)[:, None]]
        H = torch.zeros(B, m + 1, m, dtype=b.dtype, device=b.device)
        e1 = torch.zeros(B, m + 1, 1, dtype=b.dtype, device=b.device)
        e1[:, 0, 0] = beta
        y = None
        for j in range(m):
            w = op(V[j])
            for i in range(j + 1):  # modified Gram-Schmidt, per row
                hij = (w * V[i]).sum(dim=1)
                H[:, i, j] = hij
                w = w - hij[:, None] * V[i]
            hn = torch.linalg.vector_norm(w, dim=1)
            H[:, j + 1, j] = hn
            V.append(w / hn.clamp_min(torch.finfo(b.dtype).tiny)[:, None])
            Hj = H[:, : j + 2, : j + 1]  # (B, j+2, j+1)
            y = torch.linalg.lstsq(Hj, e1[:, : j + 2]).solution  # (B, j+1, 1)
            res = torch.linalg.vector_norm(e1[:, : j + 2] - Hj @ y, dim=(1, 2))
            if bool((res <= target).all()):
                break
        Vm = torch.stack(V[: y.shape[1]], dim=2)  # (B, n, j+1)
        x = x + (Vm @ y)[:, :, 0]
        resid = res
    return (x, resid) if return_residual else x


