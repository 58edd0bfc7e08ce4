"""The shared parts of the root finders: the batch view, tolerances, the per-sample
convergence monitor and the abstract base class (the finders are in :mod:`solvers._root`).

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

"Converged" is never decided by the update alone. Fixed point and Anderson take the
residual ``G(x) - x`` as their update (Anderson also asks for a scaled residual of at most
one). The Newton methods' update is the residual preconditioned by the Newton matrix
``I - J_G``, which says how far the root is only if the linear solve really solved:
each Newton iteration reports the samples whose linear solve is trustworthy (a
nonsingular, finite LU; a GMRES run whose own residual fell below half the nonlinear
residual), and the others cannot converge. A singular Newton matrix is its own failure
(``reason`` names it); an equation without a root (``x = 1 + x``) makes no progress and
is reported as diverged, never as converged.

Half precision (float16, bfloat16): the linear algebra (LU, GMRES, least squares) and
the convergence norms run in float32; the field is evaluated in the state's dtype.
An empty unknown (``n = 0``) is solved trivially (nothing to do, zero iterations).

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

__all__ = ["AbstractRootFinder", "RootResult", "Tolerance", "BatchView", "scaled_rms", "work_dtype", "alternatives", "empty_result"]

_HALF = (torch.float16, torch.bfloat16)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the linear algebra for a state of ``dtype``: float32 for half precision
    (LU and least squares have no half-precision kernels, and half overflows in norms)."""
    return torch.float32 if dtype in _HALF else dtype


def alternatives(name: str) -> str:
    """What to try when root finder ``name`` failed: never the one that failed."""
    other = {"newton": "root_finder='newton_krylov' or 'anderson'", "newton_krylov": "root_finder='newton' (small states) or 'anderson'"}
    return "try " + other.get(name, "root_finder='newton' or 'newton_krylov'") + ", a smaller step, or more `max_iters`"


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
    """Per-sample RMS of ``v / scale``: ``(B, n) -> (B,)`` (float32 or wider)."""
    w = work_dtype(v.dtype)
    if w != v.dtype:
        v, scale = v.to(w), scale.to(w)
    if v.shape[1] == 0:
        return v.new_zeros(v.shape[0])
    return torch.sqrt(torch.mean((v / scale) ** 2, dim=1))


class _Monitor:
    """Per-sample convergence and divergence test shared by all root finders.

    The per-sample norms of an iteration are computed on the device and copied to the
    host in one transfer (the one synchronisation per iteration); the per-sample logic
    then runs on ``(B,)`` NumPy arrays, which on small systems costs far less than the
    few dozen tiny tensor operations it replaces. :attr:`active` is the device mask.
    """

    def __init__(self, B: int, device, divergence_rate: float, need_residual: bool = False,
                 growth_limit: Optional[float] = None, update_limit: Optional[float] = None):
        self.device = device
        #: iterations whose updates estimate the error only as well as an approximate inverse
        #: does (a quasi-Newton step by a preconditioner): also ask for a scaled update of at
        #: most ``update_limit``, so that a rate measured from one ratio of updates cannot
        #: declare convergence on its own
        self.update_limit = update_limit
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
        #: samples whose Newton matrix was singular, and samples whose last linear solve
        #: was not trustworthy (they may not converge on that iteration's update)
        self.singular = np.zeros(B, dtype=bool)
        self.lin_failed = np.zeros(B, dtype=bool)

    def mark_singular(self, bad: np.ndarray) -> None:
        """Samples whose Newton matrix is singular fail now (no update can be trusted)."""
        bad = bad & self.active_np
        if bad.any():
            self.singular |= bad
            self.diverged |= bad
            self.active_np = self.active_np & ~bad
            self._active_t = torch.from_numpy(self.active_np.copy()).to(self.device)

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

    def update(self, dx: torch.Tensor, r: torch.Tensor, scale: torch.Tensor, lin_ok: Optional[torch.Tensor] = None) -> bool:
        """Record one iteration (update ``dx``, residual ``r``); return True if any is active.

        ``lin_ok``: ``(B,)`` bool, for Newton methods: whether the linear solve behind
        ``dx`` is trustworthy; a sample whose solve is not may not converge on this update.
        """
        d_t = scaled_rms(dx, scale)
        res_t = scaled_rms(r, scale)
        if self.rate_scale is None:
            self.rate_scale = scale
        # rates are measured in a fixed norm: scaled by the first iteration's tolerance, so
        # that a slowly contracting small component (a stiff direction under an old
        # Jacobian) is not hidden behind a fast contracting large one
        raw_t = d_t if self.rate_scale is scale else scaled_rms(dx, self.rate_scale)
        raw_r_t = torch.linalg.vector_norm(r.to(d_t.dtype), dim=1)  # divergence: growth of the plain residual
        rows = [d_t, res_t, raw_t, raw_r_t] + ([] if lin_ok is None else [lin_ok.to(d_t.dtype)])
        host = torch.stack(rows).to(torch.float64).cpu().numpy()  # the one sync
        d, res, raw, raw_r = host[:4]
        lin = np.ones_like(d, dtype=bool) if lin_ok is None else host[4] > 0.5
        act = self.active_np
        self.res = np.where(act, res, self.res)
        finite = np.isfinite(d) & np.isfinite(res)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            rate = np.full_like(d, math.nan) if self.prev is None else raw / self.prev  # contraction of the updates
            rate_r = np.full_like(d, math.nan) if self.prev_r is None else raw_r / self.prev_r  # growth of the residual
            est = np.where(rate < 1, rate / (1 - rate) * d, math.inf)
        conv = act & finite & lin & ((d <= 0.01) | (est <= 1.0))
        self.lin_failed = np.where(act, ~lin, self.lin_failed)
        if self.need_residual:  # non-monotone iterations (Anderson): also ask for a small residual
            conv &= res <= 1.0
        if self.update_limit is not None:
            conv &= d <= self.update_limit
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
        n_sing = int(self.singular.sum())
        n_lin = int((self.lin_failed & ~self.converged & ~self.singular).sum())
        if n_sing:
            reason = f"the Newton matrix I - J is singular in {n_sing} of {x.shape[0]} sample(s) (no unique root near the guess)"
        elif n_lin:
            reason = (f"no progress in {n_lin} of {x.shape[0]} sample(s): the linear solve of the Newton step failed "
                      "(the Newton matrix I - J is singular or near it; the equation may have no root)")
        elif n_div:
            if self.growth_limit is None:
                how = f"residual grew by > {self.divergence_rate:g} in one iteration or for 3 in a row, or non-finite"
            else:
                how = f"residual grew to > {self.growth_limit:g} times its smallest value, or non-finite"
            reason = f"diverged in {n_div} of {x.shape[0]} sample(s) ({how})"
        else:
            reason = f"not converged in {max_iters} iterations in {n_bad} of {x.shape[0]} sample(s)"
        return RootResult(x, converged, k, res, reason)


def empty_result(x0: torch.Tensor) -> RootResult:
    """The solution of an equation in zero unknowns: nothing to solve."""
    return RootResult(x0, torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device), 0, 0.0)


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


