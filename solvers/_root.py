"""Root finders for the fixed-point equations ``x = G(x)`` of implicit steps, per sample.

Picard iteration, Anderson acceleration and simplified Newton with dense per-sample
Jacobians live here; Newton–Krylov (GMRES with JVPs) in :mod:`solvers._krylov`; the
batch view, tolerances and the convergence monitor they share in :mod:`solvers._rootbase`
(whose docstring states the convergence and failure rules).
"""

from __future__ import annotations

import numpy as np
import torch

from ._krylov import NewtonKrylov, gmres
from ._lu import lu_factor_ex
from ._rootbase import (
    AbstractRootFinder,
    BatchView,
    RootResult,
    Tolerance,
    _Monitor,
    _positive_float,
    _positive_int,
    alternatives,
    empty_result,
    scaled_rms,
    work_dtype,
)

__all__ = ["AbstractRootFinder", "FixedPoint", "Anderson", "Newton", "NewtonKrylov", "RootResult", "Tolerance", "BatchView",
           "gmres", "get_root_finder", "scaled_rms", "alternatives", "work_dtype", "ROOT_FINDERS"]

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
        if x0.shape[1] == 0:
            return empty_result(x0)
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
        if x0.shape[1] == 0:
            return empty_result(x0)
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
                w = work_dtype(f.dtype)
                dX, dF = dX.to(w), dF.to(w)
                A = dF.transpose(1, 2) @ dF  # (B, mk, mk)
                # a shift below the dtype's resolution would vanish in A's diagonal
                reg = max(self.reg, 64 * torch.finfo(A.dtype).eps)
                lam = reg * A.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(torch.finfo(A.dtype).tiny)
                A = A + lam[:, None, None] * torch.eye(A.shape[1], dtype=A.dtype, device=A.device)
                gam, info = torch.linalg.solve_ex(A, dF.transpose(1, 2) @ f.to(w)[:, :, None])  # (B, mk, 1)
                x_new = x + self.beta * f - ((dX + self.beta * dF) @ gam)[:, :, 0].to(x.dtype)
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

    __slots__ = ("J", "gamma_j", "lu", "gamma_lu", "like", "step_y0", "fresh_in_step", "info")

    def __init__(self, like: torch.Tensor):
        self.like = (like.shape, like.dtype, like.device)
        self.J = self.lu = self.gamma_j = self.gamma_lu = self.info = None
        self.step_y0 = None  # the state the current step started from (identity, no sync)
        self.fresh_in_step = False  # J was evaluated during the current step (attempt)

    def matches(self, x: torch.Tensor) -> bool:
        return self.like == (x.shape, x.dtype, x.device)

    def drop(self):
        self.J = self.lu = self.gamma_j = self.gamma_lu = self.info = None


def _same(a, b) -> bool:
    """``a == b`` for step factors without a host sync (tensors: only the same object)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b


def _rescale(J: torch.Tensor, gamma, gamma_j) -> torch.Tensor:
    """``J_G`` kept at ``gamma_j`` moved to ``gamma`` (``J_G = diag(gamma) J_f``). Per-sample
    ``(B, n)`` factors (a per-sample time grid) scale rows; a zero ``gamma_j`` (a sample held
    by padding when ``J`` was formed) gives that sample ``J_G = 0``: its stage is ``x = c``."""
    if isinstance(gamma, torch.Tensor) and gamma.ndim == 2 or isinstance(gamma_j, torch.Tensor) and gamma_j.ndim == 2:
        gj = torch.as_tensor(gamma_j, dtype=J.dtype, device=J.device)
        g = torch.as_tensor(gamma, dtype=J.dtype, device=J.device)
        ratio = torch.where(gj != 0, g / torch.where(gj != 0, gj, torch.ones_like(gj)), torch.zeros_like(gj))
        return ratio.expand(J.shape[:2])[:, :, None] * J
    return J * (gamma / gamma_j)


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
        if x0.shape[1] == 0:
            return empty_result(x0)
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
        """LU of ``I - J_G`` (in float32 for half-precision states); records which samples'
        matrices are singular (exactly zero pivot) or not finite in ``js.info``."""
        J = js.J if _same(gamma, js.gamma_j) else _rescale(js.J, gamma, js.gamma_j)
        J = J.to(work_dtype(J.dtype))
        n = J.shape[1]
        eye = torch.eye(n, dtype=J.dtype, device=J.device)
        # A non-finite Jacobian (NaN or inf entries: a field not differentiable there) has no
        # LU: LAPACK's pivots come back invalid and lu_solve raises. Such a sample factors
        # the identity instead and is flagged like a singular one (it fails, named, at the
        # first step; no extra host read: the flag is read with the norms).
        finite = torch.isfinite(J).flatten(1).all(1)
        lu, piv, info = lu_factor_ex(torch.where(finite[:, None, None], eye - J, eye))
        js.lu = (lu, piv)
        js.info = torch.where(finite, info, torch.ones_like(info))  # (B,) int, > 0: no Newton step
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
            rw = r.to(lu[0].dtype)  # float32 for half-precision states
            if mon.all_active:
                dx = torch.linalg.lu_solve(lu[0], lu[1], rw[:, :, None])[:, :, 0]
            else:  # solve only for the samples still iterating
                idx = torch.from_numpy(np.flatnonzero(mon.active_np)).to(r.device)
                dx = torch.zeros_like(rw)
                dx[idx] = torch.linalg.lu_solve(lu[0][idx], lu[1][idx], rw[idx, :, None])[:, :, 0]
            # a zero pivot: no Newton step exists for that sample (the one flag per
            # factorisation is read with the norms below, in the same synchronisation)
            lin_ok = js.info == 0
            dx = torch.where(lin_ok[:, None], dx, torch.zeros_like(dx)).to(x.dtype)
            stats.n_linear_solves += 1
            x_new = torch.where(act[:, None], x + dx, x)
            more = mon.update(dx, r, tol.scale(x_new), lin_ok)
            if mon.lin_failed.any():  # a zero pivot: that sample has no Newton step, it fails now
                mon.mark_singular(mon.lin_failed.copy())
                more = mon.all_active or bool(mon.active_np.any())
            x = x_new
            if not more:
                break
            if not fresh and mon.max_active_rate() > self.refresh_rate:
                js.drop()  # slow convergence with an old Jacobian: refresh it at x
            fresh = False
        return mon.result(x, k, self.max_iters), computed_first



ROOT_FINDERS = {"fixed_point": FixedPoint, "anderson": Anderson, "newton": Newton, "newton_krylov": NewtonKrylov}


def get_root_finder(spec, max_iters=None, damping=None, jvp=None, preconditioner=None, linear_solver=None) -> AbstractRootFinder:
    """A root-finder object from a name (with optional ``max_iters``/``damping``/``jvp``/
    ``preconditioner``/``linear_solver``) or an object."""
    if isinstance(spec, AbstractRootFinder):
        if any(v is not None for v in (max_iters, damping, jvp, preconditioner, linear_solver)):
            raise ValueError("`max_iters`/`damping`/`jvp`/`preconditioner`/`linear_solver` configure a root finder given by name; set them on the root-finder object instead")
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
    if jvp is not None:
        if spec != "newton_krylov":
            raise ValueError(f"option `jvp` applies to root_finder='newton_krylov' (or 'auto'), not {spec!r}")
        kw["jvp"] = jvp
    for name, value in (("preconditioner", preconditioner), ("linear_solver", linear_solver)):
        if value is not None:
            if spec != "newton_krylov":
                raise ValueError(f"option `{name}` applies to root_finder='newton_krylov' (or 'auto'), not {spec!r}")
            kw[name] = value
    return ROOT_FINDERS[spec](**kw)

