"""Implicit Runge–Kutta methods of ESDIRK form: an explicit first stage, then stages
``z_i = y0 + h sum_{j<i} a_ij k_j + h a_ii f(t_i, z_i)`` each solved by a root finder.

Backward Euler, the implicit midpoint rule and the trapezoidal rule are written in this
form (one implicit stage each), so one stepper serves them and the adaptive ESDIRK pairs
of :mod:`solvers._sdirk`. Stage derivatives are recovered as ``k_i = (z_i - c_i)/(h a_ii)``
(not by evaluating ``f`` again, which would amplify the root-finding error by ``|h J|`` on
stiff problems). Gradients flow per stage by the implicit-function theorem
(:mod:`solvers._ift`).

Options (constructor keywords, also accepted in ``odeint(..., options=...)``):

``root_finder``
    ``"auto"`` (default: ``"newton"`` when a sample has at most 256 real unknowns *and*
    the dense batched Jacobians fit the memory budget, else ``"newton_krylov"``; see
    :func:`auto_root_finder`), ``"fixed_point"``, ``"anderson"``, ``"newton"``,
    ``"newton_krylov"``, or an :class:`~solvers.AbstractRootFinder` object.
``max_iters``, ``damping``
    Passed to a root finder given by name (``damping``: fixed point / Anderson only).
``root_rtol``, ``root_atol``
    Tolerances of the convergence test ``atol + rtol*|z|`` (per sample). By default
    ``0.1 *`` the solve's ``rtol``/``atol`` (which the API stores on the vector field;
    ``1e-7``/``1e-9`` when it did not), never below 100 ulps of the state's dtype.
``jvp``
    How Newton–Krylov forms Jacobian-vector products: ``"autograd"`` (default, exact,
    double backward) or ``"finite_difference"`` (one field evaluation each); see
    :class:`~solvers.NewtonKrylov`. Only with ``root_finder="newton_krylov"`` or ``"auto"``.
``preconditioner``
    Newton–Krylov's GMRES preconditioner: ``"none"`` (default), ``"auto"`` (the field's
    ``implicit_preconditioner`` when it has one, e.g. odenet's parabolic fields) or
    ``"field"`` (the field's, a ``ValueError`` when it has none); see
    :class:`~solvers.NewtonKrylov`. Only with ``root_finder="newton_krylov"`` or ``"auto"``.
``predictor``
    Initial guess of a stage: ``"explicit"`` (``c_i + h a_ii k_{i-1}``, an explicit step),
    ``"constant"`` (the previous stage value) or ``"auto"`` (explicit for fixed point and
    Anderson, constant for the Newton methods, whose local convergence prefers a bounded
    guess on stiff problems).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import numpy as np
import torch

from ._base import AbstractImplicitSolver, AbstractSolver, StepResult, lincomb
from ._ift import solve_stage
from ._problem import VectorField
from ._registry import register_method
from ._root import AbstractRootFinder, BatchView, Newton, NewtonKrylov, Tolerance, alternatives, get_root_finder
from ._tableau import ButcherTableau

__all__ = ["AbstractESDIRK", "ImplicitEuler", "ImplicitMidpoint", "Trapezoid", "auto_root_finder", "DENSE_MEMORY_BUDGET"]

_AUTO_DENSE_LIMIT = 256
#: Bytes that ``root_finder="auto"`` lets dense Newton spend on its per-sample Jacobians.
DENSE_MEMORY_BUDGET = 2**28
#: Batched ``(B, n, n)`` arrays alive at once in dense Newton: the Jacobian, its LU and the
#: ``n`` batched VJP seeds and rows that build it.
_DENSE_COPIES = 4


def auto_root_finder(B: int, n: int, itemsize: int, budget: int = None) -> str:
    """The root finder ``root_finder="auto"`` picks for ``B`` samples of ``n`` real unknowns.

    ``"newton"`` (per-sample dense Jacobians, exact and cheap for small systems) when
    ``n <= 256`` and ``4 * B * n^2 * itemsize`` bytes (the Jacobian, its LU and the batched
    VJPs that build it) fit ``budget`` (default :data:`DENSE_MEMORY_BUDGET`, 256 MiB);
    otherwise ``"newton_krylov"``, whose memory is ``O(B n)`` per Krylov vector. Half
    precision counts as float32 (its linear algebra runs in float32).
    """
    budget = DENSE_MEMORY_BUDGET if budget is None else budget
    if n <= _AUTO_DENSE_LIMIT and _DENSE_COPIES * B * n * n * max(itemsize, 4) <= budget:
        return "newton"
    return "newton_krylov"


def _check_tol(name, v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"option `{name}` must be a finite non-negative float, got {v!r}")
    return float(v)


class ImplicitOptions:
    """The options every implicit method shares (root finder, its tolerances, the
    predictor) and the resolution of ``root_finder="auto"``; see the module docstring."""

    #: unknowns of one root solve per state component (1: one stage at a time; a
    #: collocation method solves all ``s`` stages together)
    _auto_unknowns = 1
    option_names = ("root_finder", "max_iters", "damping", "root_rtol", "root_atol", "predictor", "jvp", "preconditioner", "linear_solver")

    def __init__(self, **options):
        AbstractSolver.__init__(self, **options)
        rf = options.get("root_finder", "auto")
        max_iters, damping, jvp = options.get("max_iters"), options.get("damping"), options.get("jvp")
        pc, ls = options.get("preconditioner"), options.get("linear_solver")
        if rf == "auto":
            if damping is not None:
                raise ValueError("option `damping` needs root_finder='fixed_point' or 'anderson'")
            kw = {} if max_iters is None else {"max_iters": max_iters}
            nk = dict(kw, **{k: v for k, v in (("jvp", jvp), ("preconditioner", pc), ("linear_solver", ls)) if v is not None})
            self._auto = (Newton(**kw), NewtonKrylov(**nk))
            self._finder = None
        else:
            self._finder = get_root_finder(rf, max_iters, damping, jvp, pc, ls)
        self._root_rtol = _check_tol("root_rtol", options.get("root_rtol"))
        self._root_atol = _check_tol("root_atol", options.get("root_atol"))
        pred = options.get("predictor", "auto")
        if pred not in ("auto", "explicit", "constant"):
            raise ValueError(f"option `predictor` must be 'auto', 'explicit' or 'constant', got {pred!r}")
        self._predictor = pred

    def root_finder_for(self, y0: torch.Tensor) -> AbstractRootFinder:
        """The root finder used for a state like ``y0`` (resolves ``"auto"``)."""
        if self._finder is not None:
            return self._finder
        view = BatchView(y0)
        n = (y0.numel() // view.B) * (2 if view.complex else 1)
        name = auto_root_finder(view.B, n * self._auto_unknowns, y0.real.element_size())
        return self._auto[0] if name == "newton" else self._auto[1]

    def _tolerance(self, func, view: BatchView, y0: torch.Tensor) -> Tolerance:
        tols = getattr(func, "tols", None) or (1e-7, 1e-9)
        rtol = self._root_rtol if self._root_rtol is not None else 0.1 * tols[0]
        atol = self._root_atol if self._root_atol is not None else 0.1 * tols[1]
        eps = torch.finfo(y0.real.dtype).eps
        rtol = torch.clamp(rtol, min=100 * eps) if isinstance(rtol, torch.Tensor) else max(rtol, 100 * eps)
        y = view.flat(y0.detach())
        floor = 100 * eps * torch.sqrt(torch.mean(y * y, dim=1, keepdim=True))  # (B, 1)
        return Tolerance(view.flat_tol(rtol), view.flat_tol(atol), floor)


class _ESDIRKMixin(ImplicitOptions):
    """Stepper over a tableau with an explicit first stage and implicit diagonal entries."""

    tableau: ButcherTableau

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        if tab is None:
            return
        a = tab.a
        s = tab.stages
        if s < 2 or tab.c[0] != 0.0 or np.any(a[0] != 0.0) or np.any(np.triu(a, 1) != 0.0) or np.any(np.diag(a)[1:] <= 0.0):
            raise ValueError(f"{cls.__name__}: an ESDIRK tableau needs an explicit first stage (c[0]=0, a[0]=0), no entries above the diagonal and positive a_ii for i >= 1")
        cls.stage_c = tuple(float(c) for c in tab.c)
        cls._rows = [ButcherTableau.nonzero(a[i, :i]) for i in range(s)]
        cls._diag = [float(v) for v in np.diag(a)]
        cls._b = ButcherTableau.nonzero(tab.b)
        cls._e = ButcherTableau.nonzero(tab.b_error) if tab.b_error is not None else None
        # stiffly accurate: y1 is the last stage value and k_last = f(t1, y1)
        cls._stiffly_accurate = bool(tab.c[-1] == 1.0 and np.array_equal(a[-1], tab.b))

    def step(self, func: Callable, ts: Sequence[torch.Tensor], y0: torch.Tensor, h, f0: torch.Tensor) -> StepResult:
        finder = self.root_finder_for(y0)
        view = BatchView(y0, per_sample=getattr(finder, "per_sample", True))
        tol = self._tolerance(func, view, y0)
        explicit = finder.explicit_predictor if self._predictor == "auto" else self._predictor == "explicit"
        cache = _solve_cache(func)
        new_step = getattr(finder, "new_step", None)
        if new_step is not None:
            new_step(cache, y0)
        ks, z = [f0], y0
        for i in range(1, len(self._rows)):
            terms = self._rows[i]
            ci = lincomb(y0, h, terms, ks) if terms else y0
            gamma = self._diag[i] * h
            x0 = ci + gamma * ks[-1] if explicit else z
            z, res = solve_stage(func, ts[i], ci, gamma, x0, finder, tol, view, func_stats(func), cache, key="stage")
            if not res.ok:
                info = {"stage": i, "root_finder": finder.name, "iterations": res.iterations, "residual": f"{res.residual:.3g}", "reason": res.reason,
                        "hint": alternatives(finder.name)}
                if view.B > 1 and res.converged.shape[0] == view.B:
                    info["samples"] = torch.nonzero(~res.converged)[:, 0].tolist()[:8]  # (first few; a sync only on failure)
                return StepResult(y0, y0, f0, None, None, ks, h, ts, ok=False, info=info, func=func)
            ks.append((z - ci) / _nonzero(gamma))
        if self._stiffly_accurate:
            y1, f1 = z, ks[-1]
        else:
            y1, f1 = lincomb(y0, h, self._b, ks), None
        err = lincomb(None, h, self._e, ks) if self._e else None
        return StepResult(y0, y1, f0, f1, err, ks, h, ts, func=func)


def _nonzero(gamma):
    """``gamma`` with zeros replaced by 1: on a per-sample grid a sample held by padding has
    ``h = 0``, its stage is ``z = c`` exactly and its slope ``(z - c)/1 = 0`` (no 0/0)."""
    if isinstance(gamma, torch.Tensor) and gamma.ndim > 0:
        return torch.where(gamma != 0, gamma, torch.ones_like(gamma))
    return gamma


def _solve_cache(func) -> dict:
    """The per-solve cache of the root finder (Newton's Jacobian and LU), shared by the
    stages and steps of one solve.

    It lives on the solve's :class:`~solvers._problem.VectorField` (a fresh object per solve),
    not on the method (rule 7 of :mod:`solvers._base`). A bare callable (direct use of
    ``step``) gets a fresh dict per step, shared by that step's stages only.
    """
    if not isinstance(func, VectorField):
        return {}
    cache = getattr(func, "_root_cache", None)
    if cache is None:
        cache = func._root_cache = {}
    return cache


def func_stats(func):
    stats = getattr(func, "stats", None)
    if stats is None:  # a bare callable (direct use of step): count into a throwaway
        from ._solution import Stats

        stats = Stats()
    return stats


class AbstractESDIRK(_ESDIRKMixin, AbstractImplicitSolver):
    """A fixed-step implicit method defined by an ESDIRK ``tableau``."""


_IMPLICIT_EULER = ButcherTableau(c=[0.0, 1.0], a=[[0.0], [0.0, 1.0]], b=[0.0, 1.0])
_IMPLICIT_MIDPOINT = ButcherTableau(c=[0.0, 0.5], a=[[0.0], [0.0, 0.5]], b=[0.0, 1.0])
_TRAPEZOID = ButcherTableau(c=[0.0, 1.0], a=[[0.0], [0.5, 0.5]], b=[0.5, 0.5])


@register_method
class ImplicitEuler(AbstractESDIRK):
    """Backward Euler, ``y1 = y0 + h f(t1, y1)``: the implicit ResNet block.

    Order 1, one implicit stage, A- and L-stable (``R(z) = 1/(1-z) -> 0`` as ``z -> -inf``).
    FSAL (``f1 = (y1 - y0)/h``). Dense output: cubic Hermite.
    """

    name, order, tableau = "implicit_euler", 1, _IMPLICIT_EULER


@register_method
class ImplicitMidpoint(AbstractESDIRK):
    """Implicit midpoint rule, ``y1 = y0 + h f(t0 + h/2, (y0 + y1)/2)``.

    Order 2, one implicit stage, A-stable, symplectic; preserves quadratic invariants, so
    the norm is kept on skew-Hermitian linear problems (``|R(i w)| = 1``). Not L-stable.
    Dense output: cubic Hermite (one extra evaluation at ``t1`` when needed).
    """

    name, order, tableau = "implicit_midpoint", 2, _IMPLICIT_MIDPOINT


@register_method
class Trapezoid(AbstractESDIRK):
    """Trapezoidal rule (Crank–Nicolson), ``y1 = y0 + h/2 (f(t0, y0) + f(t1, y1))``.

    Order 2, one implicit stage, A-stable (norm-preserving on skew-Hermitian linear
    problems), not L-stable. FSAL. Dense output: cubic Hermite.
    """

    name, order, tableau = "trapezoid", 2, _TRAPEZOID
