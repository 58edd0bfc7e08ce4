"""Fully implicit collocation Runge–Kutta methods: Gauss–Legendre and Radau IIA.

An ``s``-stage collocation method solves all stage values at once,
``Z = Y0 + h (A kron I) F(Z)`` with ``Z = (z_1, ..., z_s)`` and ``F(Z) = (f(t_i, z_i))_i``:
``s n`` coupled unknowns per sample. The coupled system goes to the project's root
finders (:mod:`solvers._root`) through :class:`CollocationEquation`: dense Newton gets the
per-sample Jacobian ``h (A kron J_f)`` (simplified Newton, one ``J_f`` for every stage, kept
across steps and rescaled when ``h`` changes), Newton–Krylov the matrix-free product
``h (A kron I) (J_f(z_i) v_i)_i``; ``root_finder="auto"`` counts all ``s n`` unknowns.

The propagated solution is formed from the stage values, never by evaluating ``f`` again
(that would amplify the root-finding error by ``|hJ|`` on stiff problems):
``y1 = y0 + sum_i d_i (z_i - y0)`` with ``d = b^T A^{-1}``; for the stiffly accurate Radau IIA
methods ``y1 = z_s`` and ``f1 = k_s`` with ``K = A^{-1} (Z - Y0) / h``.

Gradients come by the implicit-function theorem on the whole coupled system, through the
same machinery as the ESDIRK stages (:func:`solvers._ift.attach_ift`): backward solves
``lam = g + (h (A kron I) dF/dZ)^T lam`` with the forward root finder.

The tableaus are derived from their nodes ``c`` (Gauss–Legendre: the roots of the shifted
Legendre polynomial; Radau IIA: of ``P_s - P_{s-1}`` shifted, ending at 1) by the
collocation integrals ``a_ij = int_0^{c_i} l_j``, ``b_j = int_0^1 l_j`` (``l_j`` the Lagrange
basis), and every class checks its declared order against the rooted-tree conditions
when it is defined.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ._base import AbstractImplicitSolver, StepResult
from ._ift import StageEquation, _private_graph, _Spec, attach_ift, needs_graph, per_sample_jacobian, scale_rows
from ._implicit import ImplicitOptions, _nonzero, _solve_cache, func_stats
from ._registry import register_method
from ._root import BatchView, Tolerance, alternatives
from ._tableau import ButcherTableau

__all__ = ["AbstractCollocation", "CollocationEquation", "collocation_tableau", "GaussLegendre4", "GaussLegendre6", "RadauIIA3", "RadauIIA5"]


def collocation_tableau(c: Sequence[float]) -> ButcherTableau:
    """The collocation Runge–Kutta tableau on the nodes ``c`` (``a_ij = int_0^{c_i} l_j``)."""
    c = np.asarray(c, dtype=np.float64)
    s = c.shape[0]
    L = np.linalg.inv(np.vander(c, s, increasing=True))  # l_j(x) = sum_k L[k, j] x^k

    def integrals(x):  # int_0^x tau^k, k = 0..s-1
        return np.array([x ** (k + 1) / (k + 1) for k in range(s)])

    a = np.stack([integrals(ci) @ L for ci in c])
    b = integrals(1.0) @ L
    return ButcherTableau(c=c, a=a, b=b)


_S3, _S6, _S15 = np.sqrt(3.0), np.sqrt(6.0), np.sqrt(15.0)
_GL4 = collocation_tableau([0.5 - _S3 / 6, 0.5 + _S3 / 6])
_GL6 = collocation_tableau([0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10])
_RADAU3 = collocation_tableau([1.0 / 3.0, 1.0])
_RADAU5 = collocation_tableau([(4.0 - _S6) / 10, (4.0 + _S6) / 10, 1.0])


def flat_step(h, view: BatchView):
    """The step size in the flat ``(B, n)`` view: a float or 0-dim tensor as it is; a
    per-sample one (``[B, 1, ...]``, a per-sample time grid) expanded to one entry per
    unknown (keeping its graph)."""
    if isinstance(h, torch.Tensor) and h.ndim > 0:
        return view.flat_tol(h)
    return h


class CollocationEquation:
    """``Z = Y0 + gamma (A kron I) F(Z)`` in the real ``(B, s n)`` view (``gamma = h``: a
    float, a 0-dim tensor or, on a per-sample time grid, ``(B, s n)``: a row scaling).

    Offers ``G``, ``jacobian`` (``gamma (A kron J_f)`` with ``J_f`` at the last stage of the
    iterate, also left in ``cache["collocation_jf"]``) and ``linearize`` to the root finders;
    ``key``/``gamma`` let Newton keep the Jacobian across steps and rescale it with ``h``.
    """

    key = "collocation"

    def __init__(self, func, ts, y0, h, A: torch.Tensor, view: BatchView, cache: dict):
        self.func, self.ts, self.view, self.cache = func, ts, view, cache
        self.A = A  # (s, s)
        self.s = A.shape[0]
        y = view.flat(y0.detach())  # (B, n)
        self.B, self.n = y.shape
        self.Y0 = y.repeat(1, self.s)  # (B, s n)
        self.gamma = h.detach() if isinstance(h, torch.Tensor) else h
        self._zero = torch.zeros_like(y0)

    def _f(self, j, xj):
        return self.view.flat(self.func(self.ts[j], self.view.state(xj)))

    def F(self, x):
        xs = x.reshape(self.B, self.s, self.n)
        return torch.stack([self._f(j, xs[:, j]) for j in range(self.s)], dim=1)  # (B, s, n)

    def couple(self, F):
        return torch.einsum("ij,bjn->bin", self.A.to(F.dtype), F).reshape(self.B, self.s * self.n)

    def G(self, x):
        return self.Y0 + self.gamma * self.couple(self.F(x))

    def jacobian(self, x):
        xs = x.reshape(self.B, self.s, self.n)
        fs = [self._f(j, xs[:, j]) for j in range(self.s - 1)]
        with torch.enable_grad(), _private_graph():  # kept out of checkpoint's hooks (see _private_graph)
            xr = xs[:, -1].detach().requires_grad_(True)
            fx = self._f(self.s - 1, xr)
        Jf = per_sample_jacobian(fx, xr).detach()  # (B, n, n)
        self.cache["collocation_jf"] = Jf
        fs.append(fx.detach())
        G = self.Y0 + self.gamma * self.couple(torch.stack(fs, dim=1))
        A = self.A.to(Jf.dtype)
        J = (A[None, :, None, :, None] * Jf[:, None, :, None, :]).reshape(self.B, self.s * self.n, self.s * self.n)
        return G, scale_rows(self.gamma, J)

    def linearize(self, x):
        xs = x.reshape(self.B, self.s, self.n)
        parts = [StageEquation(self.func, self.ts[j], self._zero, 1.0, self.view).linearize(xs[:, j]) for j in range(self.s)]
        G = self.Y0 + self.gamma * self.couple(torch.stack([p[0] for p in parts], dim=1))
        gamma = self.gamma

        def jvp(v):
            vs = v.reshape(self.B, self.s, self.n)
            return gamma * self.couple(torch.stack([p[1](vs[:, j]) for j, p in enumerate(parts)], dim=1))

        return G, jvp


class AbstractCollocation(ImplicitOptions, AbstractImplicitSolver):
    """A fully implicit collocation method defined by its ``tableau`` (see the module
    docstring). Options: those of the ESDIRK methods (``root_finder``, ``max_iters``,
    ``damping``, ``root_rtol``, ``root_atol``, ``predictor``)."""

    tableau: ButcherTableau

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        if tab is None:
            return
        tab.check_order(cls.order, cls.__name__)
        A = tab.a
        cls.stage_c = (0.0,) + tuple(float(c) for c in tab.c)  # ts[0] = t0, then the stages
        cls._auto_unknowns = tab.stages
        cls._Ainv = np.linalg.inv(A)
        cls._stiffly_accurate = bool(tab.c[-1] == 1.0 and np.array_equal(A[-1], tab.b))
        cls._d = tab.b @ cls._Ainv  # y1 = y0 + sum_i d_i (z_i - y0)
        # dense output: the collocation polynomial through (0, y0), (c_i, z_i)
        W = np.stack([tab.c ** (k + 1) for k in range(tab.stages)], axis=1)  # W[j, k] = c_j^(k+1)
        cls._dense = np.linalg.inv(W)  # P_i(theta) = sum_k dense[k, i] theta^(k+1)

    def _consts(self, like: torch.Tensor):
        key = (like.dtype, like.device)
        cache = self.__dict__.setdefault("_const_cache", {})
        if key not in cache:
            as_t = lambda a: torch.as_tensor(a, dtype=like.dtype, device=like.device)  # noqa: E731
            cache[key] = (as_t(self.tableau.a), as_t(self._Ainv), as_t(self._d), as_t(self._dense))
        return cache[key]

    def solve_stages(self, func, ts, y0, h, f0):
        """Solve the coupled stages; return ``(view, Z (B, s, n) or None, result, finder)``."""
        finder = self.root_finder_for(y0)
        view = BatchView(y0, per_sample=getattr(finder, "per_sample", True))
        tol = self._tolerance(func, view, y0)
        s = self.tableau.stages
        tile = lambda v: v.repeat(1, s) if isinstance(v, torch.Tensor) else v  # noqa: E731
        tol = Tolerance(tile(tol.rtol), tile(tol.atol), tol.floor)
        hf = flat_step(h, view)  # (B, n) on a per-sample grid
        hd = hf.detach() if isinstance(hf, torch.Tensor) else hf
        tile_h = lambda v: v.repeat(1, s) if isinstance(v, torch.Tensor) and v.ndim == 2 else v  # noqa: E731
        cache = _solve_cache(func)
        new_step = getattr(finder, "new_step", None)
        if new_step is not None:
            new_step(cache, y0)
        yflat = view.flat(y0.detach())
        A, Ainv, d, _ = self._consts(yflat)
        eq = CollocationEquation(func, ts[1:], y0, tile_h(hd), A, view, cache)
        explicit = finder.explicit_predictor if self._predictor == "auto" else self._predictor == "explicit"
        guess = self.stage_guess(cache, y0, h, yflat) if self._predictor == "auto" else None
        if guess is not None:
            x0 = guess.reshape(eq.B, -1)
        elif explicit:  # z_i = y0 + c_i h f0
            c = torch.as_tensor(self.tableau.c, dtype=yflat.dtype, device=yflat.device)
            hc = c[None, :, None] * (hd[:, None, :] if isinstance(hd, torch.Tensor) and hd.ndim == 2 else hd)
            x0 = (yflat[:, None, :] + hc * view.flat(f0.detach())[:, None, :]).reshape(eq.B, -1)
        else:
            x0 = eq.Y0
        stats = func_stats(func)
        if getattr(finder, "preconditioner", "none") == "field":  # "auto" quietly runs without one
            raise ValueError("option `preconditioner='field'` applies to one-stage-at-a-time implicit methods (implicit "
                             f"Euler, ESDIRK); {type(self).__name__} solves its stages coupled and has no field "
                             "preconditioner: use preconditioner='none' or 'auto'")
        with torch.no_grad():
            res = finder.solve(eq, x0, tol, stats, cache)
        stats.n_root_solves += 1
        stats.n_root_iters += res.iterations
        stats.max_root_iters = max(stats.max_root_iters, res.iterations)
        if not res.ok:
            stats.n_root_failures += 1
            return view, None, res, finder
        Z = res.x
        if needs_graph(func, y0, h, ts[-1]):
            Zd = Z.detach()
            Y0 = view.flat(y0).repeat(1, s)
            Gz = Y0 + tile_h(hf) * eq.couple(eq.F(Zd))  # one evaluation with a graph to y0, h, t, params
            tsd = [t.detach() for t in ts[1:]]
            back = CollocationEquation(func, tsd, y0, 1.0, A, view, {})  # the transposed solve's map
            fmap = lambda xr: back.couple(back.F(xr))  # noqa: E731
            spec = _Spec(func, ts[-1].detach(), Zd, eq.gamma, BatchView(Zd), finder, _rtol(tol), stats, fmap=fmap)
            Z = attach_ift(Zd, Gz, spec)
        return view, Z.reshape(eq.B, s, eq.n), res, finder

    def stage_guess(self, cache: dict, y0: torch.Tensor, h, yflat: torch.Tensor):
        """A starting guess ``(B, s, n)`` for the stage values, or None (the predictor)."""
        return None

    def step(self, func: Callable, ts: Sequence[torch.Tensor], y0: torch.Tensor, h, f0: torch.Tensor) -> StepResult:
        view, Z, res, finder = self.solve_stages(func, ts, y0, h, f0)
        if Z is None:
            return StepResult(y0, y0, f0, None, None, [], h, ts, ok=False, info=_failure_info(res, finder), func=func)
        return self._finish(func, ts, y0, h, f0, view, Z)

    def _finish(self, func, ts, y0, h, f0, view, Z, error=None):
        yf = view.flat(y0)[:, None, :]  # (B, 1, n)
        _, Ainv, d, _ = self._consts(Z)
        dZ = Z - yf  # (B, s, n) stage increments
        if self._stiffly_accurate:
            y1f = Z[:, -1]
            k_last = torch.einsum("j,bjn->bn", Ainv[-1], dZ) / _nonzero(flat_step(h, view))  # (a held sample: dZ = 0)
            f1 = view.state(k_last)
        else:
            y1f = yf[:, 0] + torch.einsum("i,bin->bn", d, dZ)
            f1 = None
        ks = [view.state(Z[:, i]) for i in range(Z.shape[1])]  # stage values (dense output)
        return StepResult(y0, view.state(y1f), f0, f1, error, ks, h, ts, func=func)

    def interpolate(self, step: StepResult, thetas: torch.Tensor, get_f1: Callable) -> torch.Tensor:
        """The collocation polynomial (degree ``s``) through ``y0`` and the stage values."""
        y0 = step.y0.reshape(1, -1)
        dZ = torch.stack([z.reshape(-1) for z in step.ks]) - y0  # (s, N)
        th = thetas.to(y0.real.dtype)
        *_, dense = self._consts(th)
        powers = th[:, None] ** torch.arange(1, dense.shape[0] + 1, device=th.device, dtype=th.dtype)  # (m, s)
        w = powers @ dense  # (m, s): P_i(theta)
        if dZ.is_complex():
            w = w.to(dZ.dtype)
        return (y0 + w @ dZ).reshape(th.shape[0], *step.y0.shape)


def _rtol(tol: Tolerance) -> float:
    return tol.rtol if not isinstance(tol.rtol, torch.Tensor) else float(tol.rtol.max())


def _failure_info(res, finder) -> dict:
    info = {"stages": "all (collocation)", "root_finder": finder.name, "iterations": res.iterations,
            "residual": f"{res.residual:.3g}", "reason": res.reason, "hint": alternatives(finder.name)}
    conv = getattr(res, "converged", None)
    if isinstance(conv, torch.Tensor) and conv.ndim == 1 and conv.shape[0] > 1:
        info["samples"] = torch.nonzero(~conv)[:, 0].tolist()[:8]  # (first few; a sync only on failure)
    return info


@register_method
class GaussLegendre4(AbstractCollocation):
    """Gauss–Legendre collocation, 2 stages: order 4.

    A-stable, symplectic and symmetric; preserves quadratic invariants, so the norm is kept
    on skew-Hermitian linear problems (``|R(iy)| = 1``; ``R(-inf) = (-1)^s``: not L-stable).
    Fixed step. Dense output (adaptive loops only): the collocation polynomial.
    """

    name, order, tableau = "gl4", 4, _GL4


@register_method
class GaussLegendre6(AbstractCollocation):
    """Gauss–Legendre collocation, 3 stages: order 6.

    A-stable, symplectic, symmetric, norm-preserving (as :class:`GaussLegendre4`). Fixed step.
    """

    name, order, tableau = "gl6", 6, _GL6


@register_method
class RadauIIA3(AbstractCollocation):
    """Radau IIA collocation, 2 stages: order 3.

    A- and L-stable, stiffly accurate (``y1 = z_2``, ``c_2 = 1``; ``f1`` from the stage
    values, so FSAL). Fixed step.
    """

    name, order, tableau = "radauIIA3", 3, _RADAU3


@register_method
class RadauIIA5(AbstractCollocation):
    """Radau IIA collocation, 3 stages: order 5 (the method of Hairer–Wanner's RADAU5).

    A- and L-stable, stiffly accurate, FSAL. Fixed step; ``radau5`` is its adaptive form.
    """

    name, order, tableau = "radauIIA5", 5, _RADAU5
