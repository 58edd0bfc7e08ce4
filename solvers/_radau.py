"""``radau5``: adaptive Radau IIA of order 5 with the embedded error estimate of
Hairer & Wanner's RADAU5 (as in scipy's ``Radau``).

The step is :class:`~solvers.RadauIIA5`'s (three coupled stages through the project's root
finders, dense Newton with the Jacobian kept across steps, gradients by the
implicit-function theorem). The error estimate is Hairer–Wanner's (Solving ODEs II,
IV.8, eq. 8.19–8.20), with ``gamma0 = 1/mu``, ``mu = 3 + 3^(2/3) - 3^(1/3)`` the real
eigenvalue of ``A^{-1}`` and ``e = (-13 - 7 sqrt 6, -13 + 7 sqrt 6, -1)/3``:

    err  = (I - gamma0 h J)^{-1} gamma0 h (f(t0, y0) + sum_i e_i (z_i - y0)/h)
    err' = (I - gamma0 h J)^{-1} gamma0 h (f(t0, y0 + err) + sum_i e_i (z_i - y0)/h)

The first form alone is ``O(h^4)`` but unbounded for stiff components; RADAU5 and scipy
use the second, filtered form after a rejection. Here it is always used: one more
evaluation per step, no host synchronisation to decide, and no spurious rejections on
stiff problems. ``J`` is the Jacobian Newton kept (``cache["collocation_jf"]``); with a
matrix-free root finder the system is solved by GMRES with JVPs at ``y0``. The estimate
is of order 3 (``error_order``), which sets the controller exponent ``1/4`` as in RADAU5.
Dense output: the collocation polynomial (degree 3).
"""

from __future__ import annotations

import numpy as np
import torch

from ._base import AbstractAdaptiveSolver, StepResult
from ._collocation import _RADAU5, AbstractCollocation, _failure_info, flat_step
from ._ift import StageEquation
from ._implicit import _nonzero, _solve_cache
from ._krylov import gmres
from ._lu import lu_factor_ex
from ._registry import register_method
from ._rootbase import work_dtype

__all__ = ["Radau5"]


def _per_sample(h) -> bool:
    return isinstance(h, torch.Tensor) and h.ndim > 0


def _float(h) -> float:
    return float(h.detach()) if isinstance(h, torch.Tensor) else float(h)

_MU = 3.0 + 3.0 ** (2.0 / 3.0) - 3.0 ** (1.0 / 3.0)
_GAMMA0 = 1.0 / _MU
_E = np.array([-13.0 - 7.0 * np.sqrt(6.0), -13.0 + 7.0 * np.sqrt(6.0), -1.0]) / 3.0


@register_method
class Radau5(AbstractCollocation, AbstractAdaptiveSolver):
    """Adaptive Radau IIA 5: order 5, embedded estimate of order 3, 3 implicit stages.

    A- and L-stable, stiffly accurate; one evaluation of ``f(t1, y1)`` per step. Error estimate
    of Hairer–Wanner's RADAU5 (see the module docstring). Dense output: the collocation
    polynomial. The stiff solver of choice at moderate and tight tolerances.
    """

    name, order, error_order, tableau = "radau5", 5, 3, _RADAU5

    def step(self, func, ts, y0, h, f0) -> StepResult:
        view, Z, res, finder = self.solve_stages(func, ts, y0, h, f0)
        cache = _solve_cache(func)
        if Z is None:
            cache.pop("radau5_prev", None)
            return StepResult(y0, y0, f0, None, None, [], h, ts, ok=False, info=_failure_info(res, finder), func=func)
        with torch.no_grad():
            err = self._error(func, ts[0], y0, h, f0, view, Z.detach())
        out = self._finish(func, ts, y0, h, f0, view, Z, error=err)
        # this step's collocation polynomial starts the next Newton solve (as RADAU5/scipy);
        # on a per-sample grid (h of shape [B, 1, ...]) each sample accepts or rejects on its
        # own, so the next step starts from the predictor instead
        if _per_sample(h):
            cache.pop("radau5_prev", None)
        else:
            cache["radau5_prev"] = (y0, out.y1, _float(h), view.flat(y0.detach()), Z.detach())
        # no FSAL: the error estimate of the next step needs f(t1, y1) itself (as RADAU5 and
        # scipy evaluate it); the derivative recovered from the stage values carries the root
        # solve's error divided by h, which the estimate does not filter
        out.f1 = None
        return out

    def stage_guess(self, cache, y0, h, yflat):
        """The previous step's collocation polynomial at this step's stage times: extrapolated
        after an accepted step (``y0`` is its ``y1``), re-sampled after a rejected one (``y0``
        is its ``y0``). Usually saves Newton iterations over the constant guess."""
        prev = cache.get("radau5_prev")
        if prev is None:
            return None
        p_y0, p_y1, p_h, p_yf, p_Z = prev
        if y0 is p_y1:
            start = 1.0
        elif y0 is p_y0:
            start = 0.0
        else:
            return None
        if p_Z.shape[0] != yflat.shape[0] or p_Z.shape[2] != yflat.shape[1] or not p_h:
            return None
        nodes = np.concatenate([[0.0], self.tableau.c])  # the polynomial through y0 and the stages
        theta = start + np.asarray(self.tableau.c) * (_float(h) / p_h)  # new stage times, in units of h_prev
        W = np.ones((len(theta), len(nodes)))  # Lagrange basis (s, s+1)
        for j, xj in enumerate(nodes):
            for m, xm in enumerate(nodes):
                if m != j:
                    W[:, j] *= (theta - xm) / (xj - xm)
        Wt = torch.as_tensor(W, dtype=p_Z.dtype, device=p_Z.device)
        P = torch.cat([p_yf[:, None, :], p_Z], dim=1)  # (B, s+1, n)
        guess = torch.einsum("ij,bjn->bin", Wt, P)  # (B, s, n)
        return guess if bool(torch.isfinite(guess).all()) else None

    def _error(self, func, t0, y0, h, f0, view, Z):
        yf = view.flat(y0.detach())  # (B, n)
        e = torch.as_tensor(_E, dtype=Z.dtype, device=Z.device)
        hf = flat_step(h.detach() if isinstance(h, torch.Tensor) else h, view)  # (B, n) on a per-sample grid
        ZE = torch.einsum("i,bin->bn", e, Z - yf[:, None, :]) / _nonzero(hf)  # (B, n) (a held sample: 0)
        gh = _GAMMA0 * hf
        solve = self._linear_solver(func, t0, y0, view, gh, yf)
        err = solve(gh * (view.flat(f0.detach()) + ZE))
        f_err = view.flat(func(t0, view.state(yf + err)))
        err = solve(gh * (f_err + ZE))
        return view.state(err)

    def _linear_solver(self, func, t0, y0, view, gh, yf):
        """``v -> (I - gh J)^{-1} v`` per sample: LU of the kept dense Jacobian, else GMRES."""
        Jf = _solve_cache(func).get("collocation_jf")
        B, n = yf.shape
        if Jf is not None and Jf.shape == (B, n, n):
            w = work_dtype(Jf.dtype)
            g = gh.to(w)[:, :, None] if _per_sample(gh) else gh
            M = torch.eye(n, dtype=w, device=Jf.device) - g * Jf.to(w)
            lu, piv, info = lu_factor_ex(M)

            def solve(v):
                out = torch.linalg.lu_solve(lu, piv, v.to(w)[:, :, None])[:, :, 0]
                # a singular matrix gives a non-finite estimate: the step is rejected, h shrinks
                return torch.where((info == 0)[:, None], out, torch.full_like(out, float("inf"))).to(v.dtype)

            return solve
        with torch.enable_grad():
            _, jvp = StageEquation(func, t0, torch.zeros_like(y0), 1.0, view).linearize(yf)

        def solve(v):
            return gmres(lambda u: u - gh * jvp(u), v, rtol=1e-3, restart=20, max_restarts=3)

        return solve
