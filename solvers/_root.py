"""Root finders for the fixed-point equations ``x = G(x)`` of implicit steps, per sample.

Every root finder works on a real ``(B, n)`` view of the unknown (``B`` samples of ``n``
real numbers; see :class:`BatchView`) and on an *equation* object that offers

- ``G(x)`` -> ``(B, n)``: the map whose fixed point is sought;
- ``linearize(x)`` -> ``(G(x), jvp)`` with ``jvp(v) = J_G(x) v`` (matrix-free);
- ``jacobian(x)`` -> ``(G(x), J)`` with ``J`` the ``(B, n, n)`` per-sample Jacobian of ``G``;
- ``key``: a hashable that is equal for equations sharing a Jacobian (ESDIRK stages), or
  ``None``; with a key, ``gamma`` (``J_G = gamma * J_f``) lets Newton rescale a kept ``J_G``.

Convergence is decided per sample by :class:`_Monitor`: the update ``dx`` is measured in
the scaled RMS norm ``rms(dx / (atol + rtol*|x|))``; a sample has converged when the
update is tiny (``<= 0.01``) or when the rate-based estimate of the remaining error,
``rate/(1-rate) * |dx|``, is at most one (rates in the scaled norm with the first
iteration's scale held fixed). A sample diverges when its residual grows by more than
``divergence_rate`` (2 by default) in one iteration or for three in a row, or becomes
non-finite; Anderson, whose residual may rise before it falls, uses a non-monotone test
instead (residual above ``divergence_factor`` times its smallest value). Converged and diverged
samples are frozen (their state no longer changes and, for Newton, their linear solves
are skipped). The iteration loop synchronises with the host once per iteration (one
transfer of the per-sample norms; the per-sample bookkeeping runs in NumPy).

``solve(eq, x0, tol, stats, cache)``: ``cache`` is a per-solve dict (never state on the
finder) in which :class:`Newton` keeps its Jacobian and LU across stages and steps.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Optional

import numpy as np
import torch

__all__ = ["AbstractRootFinder", "FixedPoint", "Anderson", "Newton", "NewtonKrylov", "RootResult", "Tolerance", "BatchView", "gmres", "get_root_finder"]


class BatchView:
    """Maps a state tensor to a real ``(B, n)`` matrix and back.

    Dim 0 is the batch when the state has ``ndim >= 2`` and ``per_sample`` is true; a 1-D
    state (or ``per_sample=False``) is one sample. Complex states are viewed as real pairs.
    """

    def __init__(self, like: torch.Tensor, per_sample: bool = True):
        self.shape = like.shape
        self.complex = like.is_complex()
        self.B = like.shape[0] if (per_sample and like.ndim >= 2 and like.shape[0] > 0) else 1

    def flat(self, y: torch.Tensor) -> torch.Tensor:
        if self.complex:
            y = torch.view_as_real(y.contiguous())  # (*shape, 2)
        return y.reshape(self.B, -1)  # (B, n)

    def state(self, x: torch.Tensor) -> torch.Tensor:
        if self.complex:
            return torch.view_as_complex(x.reshape(*self.shape, 2).contiguous())
        return x.reshape(self.shape)

    def flat_tol(self, tol):
        """A per-component tolerance tensor (state-shaped or broadcastable) in the flat view."""
        if not isinstance(tol, torch.Tensor):
            return tol
        tol = tol.expand(self.shape)
        if self.complex:
            tol = tol.unsqueeze(-1).expand(*self.shape, 2)
        return tol.reshape(self.B, -1)


@dataclasses.dataclass
class Tolerance:
    """``scale = atol + rtol*|x|`` in the flat view (floats or ``(B, n)`` tensors)."""

    rtol: object
    atol: object
    #: optional ``(B, 1)`` lower bound on the scale (a few ulps of each sample's size), so
    #: that a tolerance below the working precision cannot make convergence impossible
    floor: Optional[torch.Tensor] = None

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        s = self.atol + self.rtol * x.abs()
        if self.floor is not None:
            s = torch.maximum(s, self.floor)
        return s.clamp_min(torch.finfo(x.dtype).tiny)


@dataclasses.dataclass
class RootResult:
    """What a root finder returns: the solution, per-sample convergence and a summary."""

    x: torch.Tensor  # (B, n)
    converged: torch.Tensor  # (B,) bool
    iterations: int  # iterations of the batched loop (the cost)
    residual: float  # largest scaled RMS residual |G(x) - x| over the samples, last iteration
    reason: str = ""  # why it failed ("" on success)

    @property
    def ok(self) -> bool:
        return not self.reason


def scaled_rms(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS of ``v / scale``: ``(B, n) -> (B,)``."""
    return torch.sqrt(torch.mean((v / scale) ** 2, dim=1))


class _Monitor:
    """Per-sample convergence and divergence test shared by all root finders.

    The per-sample norms of an iteration are computed on the device and copied to the
    host in one transfer (the one synchronisation per iteration); the per-sample logic
    then runs on ``(B,)`` NumPy arrays, which on small systems costs far less than the
    few dozen tiny tensor operations it replaces. :attr:`active` is the device mask.
    """

    def __init__(self, B: int, device, divergence_rate: float, need_residual: bool = False,
                 growth_limit: Optional[float] = None):
        self.device = device
        # non-monotone iterations (Anderson) may raise the residual for a while before they
        # converge (e.g. when the plain iteration does not contract): they diverge only when
        # the residual exceeds ``growth_limit`` times the smallest one seen so far
        self.growth_limit = growth_limit
        self.best_r: Optional[np.ndarray] = None
        self.active_np = np.ones(B, dtype=bool)
        self.converged = np.zeros(B, dtype=bool)
        self.diverged = np.zeros(B, dtype=bool)
        self.prev: Optional[np.ndarray] = None
        self.prev_r: Optional[np.ndarray] = None
        self.need_residual = need_residual
        self.stalls = np.zeros(B, dtype=np.int64)
        self.res = np.full(B, math.inf)
        self.rate = np.full(B, math.nan)
        self.divergence_rate = divergence_rate
        self.rate_scale: Optional[torch.Tensor] = None
        self._active_t = torch.ones(B, dtype=torch.bool, device=device)

    @property
    def active(self) -> torch.Tensor:
        """``(B,)`` bool tensor on the device: the samples still iterating."""
        return self._active_t

    @property
    def all_active(self) -> bool:
        return bool(self.active_np.all())

    def max_active_rate(self) -> float:
        """The largest contraction rate among the samples still iterating (nan: unknown)."""
        r = self.rate[self.active_np]
        return float(np.nanmax(r)) if r.size and not np.isnan(r).all() else math.nan

    def update(self, dx: torch.Tensor, r: torch.Tensor, scale: torch.Tensor) -> bool:
        """Record one iteration (update ``dx``, residual ``r``); return True if any is active."""
        d_t = scaled_rms(dx, scale)
        res_t = scaled_rms(r, scale)
        if self.rate_scale is None:
            self.rate_scale = scale
        # rates are measured in a fixed norm: scaled by the first iteration's tolerance, so
        # that a slowly contracting small component (a stiff direction under an old
        # Jacobian) is not hidden behind a fast contracting large one
        raw_t = d_t if self.rate_scale is scale else scaled_rms(dx, self.rate_scale)
        raw_r_t = torch.linalg.vector_norm(r, dim=1)  # divergence: growth of the plain residual
        host = torch.stack([d_t, res_t, raw_t, raw_r_t]).to(torch.float64).cpu().numpy()  # the one sync
        d, res, raw, raw_r = host
        act = self.active_np
        self.res = np.where(act, res, self.res)
        finite = np.isfinite(d) & np.isfinite(res)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            rate = np.full_like(d, math.nan) if self.prev is None else raw / self.prev  # contraction of the updates
            rate_r = np.full_like(d, math.nan) if self.prev_r is None else raw_r / self.prev_r  # growth of the residual
            est = np.where(rate < 1, rate / (1 - rate) * d, math.inf)
        conv = act & finite & ((d <= 0.01) | (est <= 1.0))
        if self.need_residual:  # non-monotone iterations (Anderson): also ask for a small residual
            conv &= res <= 1.0
        if self.growth_limit is None:
            grew = rate_r > self.divergence_rate
        else:
            best = raw_r if self.best_r is None else np.minimum(self.best_r, raw_r)
            with np.errstate(invalid="ignore"):
                grew = raw_r > self.growth_limit * best
            self.best_r = np.where(np.isfinite(raw_r), best, self.best_r if self.best_r is not None else raw_r)
        div = act & ~conv & (~finite | grew)
        self.converged |= conv
        self.diverged |= div
        act = act & ~(conv | div)
        self.prev = np.where(finite, raw, self.prev if self.prev is not None else raw)
        self.prev_r = np.where(finite, raw_r, self.prev_r if self.prev_r is not None else raw_r)
        self.rate = rate
        # residual not decreasing for 3 iterations in a row: the map does not contract here
        if not self.need_residual and self.prev_r is not None:
            grow = rate_r >= 1.0
            self.stalls = np.where(grow, self.stalls + 1, 0)
            stall = act & (self.stalls >= 3)
            self.diverged |= stall
            act = act & ~stall
        if not np.array_equal(act, self.active_np):
            self._active_t = torch.from_numpy(act.copy()).to(self.device)
        self.active_np = act
        return bool(act.any())

    def result(self, x: torch.Tensor, k: int, max_iters: int) -> RootResult:
        res = float(self.res.max()) if self.res.size else 0.0
        converged = torch.from_numpy(self.converged.copy()).to(x.device)
        if bool(self.converged.all()):
            return RootResult(x, converged, k, res)
        n_div = int(self.diverged.sum())
        n_bad = int((~self.converged).sum())
        if n_div:
            if self.growth_limit is None:
                how = f"residual grew by > {self.divergence_rate:g} in one iteration or for 3 in a row, or non-finite"
            else:
                how = f"residual grew to > {self.growth_limit:g} times its smallest value, or non-finite"
            reason = f"diverged in {n_div} of {x.shape[0]} sample(s) ({how})"
        else:
            reason = f"not converged in {max_iters} iterations in {n_bad} of {x.shape[0]} sample(s)"
        return RootResult(x, converged, k, res, reason)


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"`{name}` must be a positive int, got {v!r}")
    return v


def _positive_float(name, v, upper=math.inf):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= upper):
        raise ValueError(f"`{name}` must be a number in (0, {upper:g}], got {v!r}")
    return float(v)


class AbstractRootFinder(abc.ABC):
    """Solve ``x = G(x)`` per sample. Subclasses implement :meth:`solve`.

    Parameters
    ----------
    max_iters : int
        Iterations of the batched loop before giving up.
    divergence_rate : float
        A sample whose update grows by more than this factor in one iteration diverged.
    """

    name = ""
    #: the kind of transposed linear solve used for gradients: "iterate", "dense" or "krylov"
    backward_kind = "iterate"
    #: whether the finder benefits from starting at an explicit predictor
    explicit_predictor = True

    def __init__(self, max_iters: int, divergence_rate: float = 2.0):
        self.max_iters = _positive_int("max_iters", max_iters)
        self.divergence_rate = _positive_float("divergence_rate", divergence_rate)

    @abc.abstractmethod
    def solve(self, eq, x0: torch.Tensor, tol: Tolerance, stats, cache: Optional[dict] = None) -> RootResult:
        """Solve ``x = eq.G(x)`` per sample from ``x0``; see the module docstring."""

    def __repr__(self):
        keys = [k for k in vars(self) if not k.startswith("_")]
        return f"{type(self).__name__}(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys) + ")"


class FixedPoint(AbstractRootFinder):
    """Picard iteration ``x <- (1 - damping) x + damping G(x)``.

    Converges when ``G`` contracts (``h Lip(f) < 1`` for backward Euler); its divergence
    on stiff problems is detected (rate > 2) and reported. One evaluation per iteration.
    """

    name = "fixed_point"

    def __init__(self, damping: float = 1.0, max_iters: int = 100, divergence_rate: float = 2.0):
        super().__init__(max_iters, divergence_rate)
        self.damping = _positive_float("damping", damping, 1.0)

    def solve(self, eq, x0, tol, stats, cache=None):
        x = x0
        mon = _Monitor(x.shape[0], x.device, self.divergence_rate)
        k = 0
        for k in range(1, self.max_iters + 1):
            r = eq.G(x) - x
            dx = r * self.damping
            act = mon.active[:, None]
            x_new = torch.where(act, x + dx, x)
            more = mon.update(dx, r, tol.scale(x_new))
            x = x_new
            if not more:
                break
        return mon.result(x, k, self.max_iters)


class Anderson(AbstractRootFinder):
    """Anderson acceleration (type II) with memory ``m`` and mixing ``beta``, per sample.

    Each sample keeps its own history and solves its own small regularised least-squares
    problem (batched), so samples never mix. One evaluation per iteration.

    On a linear problem Anderson acceleration is GMRES in disguise (Walker & Ni, 2011): it
    converges where the plain iteration does not contract, as long as ``I - G'`` is
    nonsingular, but its residual need not fall monotonically on the way (the first,
    plain step can raise it by ``|G'|``). A sample therefore diverged only when its
    residual exceeds ``divergence_factor`` times the smallest residual it has had (or
    becomes non-finite); ``divergence_rate`` is not used.
    """

    name = "anderson"

    def __init__(self, m: int = 5, beta: float = 1.0, max_iters: int = 50, reg: float = 1e-10,
                 divergence_factor: float = 1e3):
        super().__init__(max_iters)
        self.m = _positive_int("m", m)
        self.beta = _positive_float("beta", beta, 1.0)
        self.reg = float(reg)
        self.divergence_factor = _positive_float("divergence_factor", divergence_factor)
        if self.divergence_factor <= 1:
            raise ValueError(f"`divergence_factor` must be > 1, got {divergence_factor!r}")

    def solve(self, eq, x0, tol, stats, cache=None):
        x = x0
        B = x.shape[0]
        mon = _Monitor(B, x.device, self.divergence_rate, need_residual=True,
                       growth_limit=self.divergence_factor)
        xs, fs = [], []
        k = 0
        for k in range(1, self.max_iters + 1):
            f = eq.G(x) - x  # (B, n) residual
            xs.append(x)
            fs.append(f)
            if len(xs) > self.m + 1:
                xs.pop(0)
                fs.pop(0)
            if len(xs) == 1:
                x_new = x + self.beta * f
            else:
                dX = torch.stack([b - a for a, b in zip(xs, xs[1:])], dim=2)  # (B, n, mk)
                dF = torch.stack([b - a for a, b in zip(fs, fs[1:])], dim=2)  # (B, n, mk)
                A = dF.transpose(1, 2) @ dF  # (B, mk, mk)
                # a shift below the dtype's resolution would vanish in A's diagonal
                reg = max(self.reg, 64 * torch.finfo(A.dtype).eps)
                lam = reg * A.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(torch.finfo(A.dtype).tiny)
                A = A + lam[:, None, None] * torch.eye(A.shape[1], dtype=A.dtype, device=A.device)
                gam, info = torch.linalg.solve_ex(A, dF.transpose(1, 2) @ f[:, :, None])  # (B, mk, 1)
                x_new = x + self.beta * f - ((dX + self.beta * dF) @ gam)[:, :, 0]
                # a still-singular least-squares system: that sample takes a plain mixing step
                x_new = torch.where((info != 0)[:, None], x + self.beta * f, x_new)
            act = mon.active[:, None]
            x_new = torch.where(act, x_new, x)
            more = mon.update(x_new - x, f, tol.scale(x_new))
            x = x_new
            if not more:
                break
        return mon.result(x, k, self.max_iters)


class _JacobianState:
    """Newton's Jacobian ``J_G`` (at ``gamma_j``) and the LU of ``I - (gamma/gamma_j) J_G``.

    Lives in the per-solve cache dict that the caller passes to :meth:`Newton.solve` (the
    ESDIRK stepper keeps that dict on the solve's vector field), never on the finder.
    """

    __slots__ = ("J", "gamma_j", "lu", "gamma_lu", "like", "step_y0", "fresh_in_step")

    def __init__(self, like: torch.Tensor):
        self.like = (like.shape, like.dtype, like.device)
        self.J = self.lu = self.gamma_j = self.gamma_lu = None
        self.step_y0 = None  # the state the current step started from (identity, no sync)
        self.fresh_in_step = False  # J was evaluated during the current step (attempt)

    def matches(self, x: torch.Tensor) -> bool:
        return self.like == (x.shape, x.dtype, x.device)

    def drop(self):
        self.J = self.lu = self.gamma_j = self.gamma_lu = None


def _same(a, b) -> bool:
    """``a == b`` for step factors without a host sync (tensors: only the same object)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b


class Newton(AbstractRootFinder):
    """Simplified Newton with per-sample dense Jacobians (batched LU), for small states.

    The Jacobian of ``G`` is formed per sample (``n`` vector-Jacobian products of the
    whole batch, vectorised) and ``I - J_G`` factorised (batched LU). Stiff-code reuse:
    for a stage equation ``x = c + gamma f(t, x)`` the Jacobian of ``f`` is kept in the
    per-solve ``cache`` and reused by every stage and across steps; ``I - gamma J_f`` is
    refactorised only when ``gamma`` (``h a_ii``) changes, i.e. once per step of an ESDIRK.
    A new Jacobian is evaluated (at the current iterate) when the contraction rate with an
    old one exceeds ``refresh_rate``; a solve that fails with an old Jacobian is restarted
    once from its initial guess with a fresh one; and :meth:`new_step` drops a Jacobian
    that is older than a step that was rejected. With ``per_sample=False`` the whole state
    is one sample (a dense Jacobian of the full batch; only sensible for tiny batches).

    When the field couples samples (e.g. batch norm) the per-sample Jacobian is only the
    block diagonal: Newton then converges more slowly but the test is on the true update.
    """

    name = "newton"
    backward_kind = "dense"
    explicit_predictor = False

    def __init__(self, max_iters: int = 10, refresh_rate: float = 0.1, per_sample: bool = True, divergence_rate: float = 2.0):
        super().__init__(max_iters, divergence_rate)
        self.refresh_rate = _positive_float("refresh_rate", refresh_rate)
        self.per_sample = bool(per_sample)

    @staticmethod
    def new_step(cache: dict, y0: torch.Tensor) -> None:
        """Tell the per-solve state that a step from ``y0`` starts.

        The adaptive loop retries a rejected step from the same ``y0`` object; if the
        Jacobian used by the rejected attempt was older than that attempt, drop it.
        """
        js = cache.get("newton_jac")
        if js is None:
            return
        if js.step_y0 is y0 and not js.fresh_in_step:
            js.drop()
        if js.step_y0 is not y0:
            js.fresh_in_step = False
        js.step_y0 = y0

    def solve(self, eq, x0, tol, stats, cache=None):
        gamma = getattr(eq, "gamma", None)
        shared = cache is not None and eq.key is not None and gamma is not None
        js = cache.get("newton_jac") if shared else None
        if js is None or not js.matches(x0):
            js = _JacobianState(x0)
            if shared:
                cache["newton_jac"] = js
        if not shared:
            gamma = 1.0  # the LU is of I - J_G itself
        old = js.J is not None
        res, computed_first = self._iterate(eq, x0, tol, stats, js, gamma)
        if not res.ok and old and not computed_first:
            # failed with a Jacobian from earlier: refresh it at the initial guess and retry once
            js.drop()
            res2, _ = self._iterate(eq, x0, tol, stats, js, gamma)
            res2.iterations += res.iterations
            return res2
        return res

    def _factor(self, js: _JacobianState, gamma):
        J = js.J if _same(gamma, js.gamma_j) else js.J * (gamma / js.gamma_j)
        n = J.shape[1]
        js.lu = torch.linalg.lu_factor(torch.eye(n, dtype=J.dtype, device=J.device) - J)
        js.gamma_lu = gamma

    def _iterate(self, eq, x0, tol, stats, js: _JacobianState, gamma):
        x = x0
        mon = _Monitor(x.shape[0], x.device, self.divergence_rate)
        fresh = computed_first = False
        k = 0
        for k in range(1, self.max_iters + 1):
            if js.J is None:
                g, js.J = eq.jacobian(x)  # (B, n), (B, n, n)
                js.gamma_j = gamma
                stats.n_jac_evals += 1
                self._factor(js, gamma)
                fresh = js.fresh_in_step = True
                computed_first = computed_first or k == 1
            else:
                if js.lu is None or not _same(gamma, js.gamma_lu):
                    self._factor(js, gamma)
                g = eq.G(x)
            lu = js.lu
            r = g - x
            act = mon.active
            if mon.all_active:
                dx = torch.linalg.lu_solve(lu[0], lu[1], r[:, :, None])[:, :, 0]
            else:  # solve only for the samples still iterating
                idx = torch.from_numpy(np.flatnonzero(mon.active_np)).to(r.device)
                dx = torch.zeros_like(r)
                dx[idx] = torch.linalg.lu_solve(lu[0][idx], lu[1][idx], r[idx, :, None])[:, :, 0]
            stats.n_linear_solves += 1
            x_new = torch.where(act[:, None], x + dx, x)
            more = mon.update(dx, r, tol.scale(x_new))
            x = x_new
            if not more:
                break
            if not fresh and mon.max_active_rate() > self.refresh_rate:
                js.drop()  # slow convergence with an old Jacobian: refresh it at x
            fresh = False
        return mon.result(x, k, self.max_iters), computed_first


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
        alpha = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(self.max_backtracks):
            trial = x + alpha[:, None] * dx
            tnorm = torch.linalg.vector_norm(eq.G(trial) - trial, dim=1)
            bad = ~(tnorm <= (1 - 1e-4 * alpha) * rnorm)  # NaN counts as bad
            if not bool(bad.any()):  # one host sync per trial
                break
            alpha = torch.where(bad, alpha * 0.5, alpha)
        return alpha[:, None] * dx

    def solve(self, eq, x0, tol, stats, cache=None):
        x = x0
        mon = _Monitor(x.shape[0], x.device, self.divergence_rate)
        k = 0
        for k in range(1, self.max_iters + 1):
            g, jvp = eq.linearize(x)
            r = g - x

            def op(v, jvp=jvp):
                stats.n_jvp_evals += 1
                return v - jvp(v)

            dx = gmres(op, r, rtol=self.forcing, restart=self.restart, max_restarts=self.max_restarts)
            stats.n_linear_solves += 1
            act = mon.active[:, None]
            dx = torch.where(act, dx, torch.zeros_like(dx))
            # the monitor judges convergence by the full Newton step (an estimate of the
            # distance to the root), not by the possibly shortened step actually taken
            step = self._line_search(eq, x, dx, torch.linalg.vector_norm(r, dim=1)) if self.max_backtracks else dx
            x_new = x + step
            more = mon.update(dx, r, tol.scale(x_new))
            x = x_new
            if not more:
                break
        return mon.result(x, k, self.max_iters)


def gmres(op, b: torch.Tensor, rtol: float = 1e-2, restart: int = 20, max_restarts: int = 2) -> torch.Tensor:
    """Batched restarted GMRES: solve ``op(x) = b`` for each row of ``b`` (``(B, n)``).

    Every row has its own Krylov space; ``op`` is applied to all rows at once. Stops when
    every row's residual is at most ``rtol * |b_row|`` (or after ``max_restarts`` cycles;
    the caller's outer iteration judges the result).
    """
    B, n = b.shape
    x = torch.zeros_like(b)
    bnorm = torch.linalg.vector_norm(b, dim=1)  # (B,)
    target = rtol * bnorm
    m = min(restart, n)
    for cycle in range(max_restarts):
        r = b - op(x) if cycle else b
        beta = torch.linalg.vector_norm(r, dim=1)  # (B,)
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
    return x


ROOT_FINDERS = {"fixed_point": FixedPoint, "anderson": Anderson, "newton": Newton, "newton_krylov": NewtonKrylov}


def get_root_finder(spec, max_iters=None, damping=None) -> AbstractRootFinder:
    """A root-finder object from a name (with optional ``max_iters``/``damping``) or an object."""
    if isinstance(spec, AbstractRootFinder):
        if max_iters is not None or damping is not None:
            raise ValueError("`max_iters`/`damping` configure a root finder given by name; set them on the root-finder object instead")
        return spec
    if not isinstance(spec, str) or spec not in ROOT_FINDERS:
        raise ValueError(f"`root_finder` must be one of {', '.join(map(repr, ROOT_FINDERS))} (or 'auto', or an AbstractRootFinder), got {spec!r}")
    kw = {}
    if max_iters is not None:
        kw["max_iters"] = max_iters
    if damping is not None:
        if spec == "fixed_point":
            kw["damping"] = damping
        elif spec == "anderson":
            kw["beta"] = damping
        else:
            raise ValueError(f"`damping` applies to root_finder='fixed_point' or 'anderson', not {spec!r}")
    return ROOT_FINDERS[spec](**kw)
