"""Linear stability of a method, measured from the method's own step.

One step of a Runge–Kutta method on the test equation ``y' = lam y`` multiplies the state
by the *stability function* ``R(z)``, ``z = h lam``. Everything here measures ``R`` by
calling ``method.step`` on ``y' = z y`` with ``h = 1`` and a whole grid of ``z`` as one
batched complex128 state, so a method registered in :data:`solvers.METHODS` tomorrow is
measured the same way as the ones of today (explicit, implicit, adaptive or not). The
closed form ``R(z) = 1 + z b^T (I - zA)^{-1} 1`` of a method's Butcher tableau is
:func:`tableau_stability_function`, an independent check of the step.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

import solvers

__all__ = ["stability_function", "tableau_stability_function", "axis_limit", "stability_region",
           "blowup_step", "resolve_method"]

MethodLike = Union[str, type, "solvers.AbstractSolver"]


def resolve_method(method: MethodLike, **options) -> "solvers.AbstractSolver":
    """A configured method instance from a registry name, a method class or an instance.

    Implicit methods get a tight root-finder tolerance (``root_rtol=1e-14``,
    ``root_atol=0``) unless ``options`` says otherwise, so the measured ``R`` is the
    method's, not the root finder's.
    """
    if isinstance(method, solvers.AbstractSolver):
        if options:
            raise ValueError("options are only accepted with a method name or class, not an instance")
        return method
    if isinstance(method, str):
        cls = solvers.get_method(method)
    elif isinstance(method, type) and issubclass(method, solvers.AbstractSolver):
        cls = method
    else:
        raise TypeError(f"`method` must be a name from solvers.METHODS, a method class or instance, got {method!r}")
    if cls.implicit:
        for key, value in (("root_rtol", 1e-14), ("root_atol", 0.0)):
            if key in cls.option_names:
                options.setdefault(key, value)
    return cls(**options)


def _linear_step(method: "solvers.AbstractSolver", rate: torch.Tensor, y0: torch.Tensor, h: float = 1.0):
    """One step of ``method`` on ``y' = rate * y`` (elementwise) from ``y0``."""
    def f(t, y):
        return rate * y

    ts = [torch.tensor(c * h, dtype=torch.float64) for c in method.stage_c]
    res = method.step(f, ts, y0, h, f(ts[0], y0))
    if not res.ok:
        raise solvers.RootFinderError(f"method {method.name!r} failed a linear step: {res.info}")
    return res.y1


def stability_function(method: MethodLike, z, **options) -> np.ndarray:
    """Measure ``R(z)``: one step of ``method`` on ``y' = z y``, ``y0 = 1``, ``h = 1``.

    Parameters
    ----------
    method : str, method class or instance
        A name from :data:`solvers.METHODS` (or a class / configured instance).
    z : complex array-like
        Points ``z = h lam`` (any shape); all are stepped at once, as one batch.
    **options
        Method options (e.g. ``root_finder`` for implicit methods).

    Returns
    -------
    numpy.ndarray
        complex128 array of ``R(z)``, shaped like ``z``.

    Examples
    --------
    >>> abs(stability_function("euler", [-2.0])[0] + 1) < 1e-15
    True
    """
    m = resolve_method(method, **options)
    if not m.one_step:
        raise ValueError(f"method {m.name!r} runs its own loop (a multistep method or an external integrator), "
                         "so it has no one-step stability function R(z); measure a one-step method "
                         "(solvers.METHODS entries with one_step=True)")
    zz = np.asarray(z, dtype=np.complex128)
    rate = torch.as_tensor(zz.reshape(-1, 1))  # (N, 1): one unknown per sample, batched
    y1 = _linear_step(m, rate, torch.ones_like(rate))
    return y1.detach().numpy().reshape(zz.shape)


def tableau_stability_function(tableau, z) -> np.ndarray:
    """``R(z) = 1 + z b^T (I - z A)^{-1} 1`` from a :class:`solvers.ButcherTableau`.

    Parameters
    ----------
    tableau : solvers.ButcherTableau
        The method's coefficients (``a`` full ``s x s``, ``b``).
    z : complex array-like

    Returns
    -------
    numpy.ndarray
        complex128, shaped like ``z``.
    """
    return _rk_stability(tableau.a, tableau.b, z)


def _rk_stability(a, b, z) -> np.ndarray:
    a = np.asarray(a, dtype=np.complex128)
    b = np.asarray(b, dtype=np.complex128)
    s = b.shape[0]
    zz = np.asarray(z, dtype=np.complex128)
    flat = zz.reshape(-1)
    mats = np.eye(s)[None] - flat[:, None, None] * a[None]  # (N, s, s)
    k = np.linalg.solve(mats, np.ones((flat.shape[0], s, 1), dtype=np.complex128))[..., 0]  # (N, s)
    return (1 + flat * (k @ b)).reshape(zz.shape)


def tableau_rounding_scale(tableau, z) -> np.ndarray:
    """``1 + |z| |b|^T (I - |z||A|)^{-1} 1`` for an explicit tableau: the size of the
    largest partial sum a step forms, i.e. the scale of its rounding error (``inf`` for
    implicit tableaux, where it has no meaning)."""
    a = np.abs(np.asarray(tableau.a, dtype=np.float64))
    if np.any(np.triu(a) != 0):
        return np.full(np.shape(z), np.inf)
    b = np.abs(np.asarray(tableau.b, dtype=np.float64))
    return np.abs(_rk_stability(a, b, np.abs(np.asarray(z))))


def stability_region(method: MethodLike, re: Sequence[float], im: Sequence[float], **options) -> np.ndarray:
    """``|R(x + iy)|`` on the grid ``re x im`` (array of shape ``(len(im), len(re))``)."""
    re = np.asarray(re, dtype=np.float64)
    im = np.asarray(im, dtype=np.float64)
    z = re[None, :] + 1j * im[:, None]
    return np.abs(stability_function(method, z, **options))


def axis_limit(R: Union[MethodLike, Callable], axis: str = "real", *, r_max: float = 1e6, n_scan: int = 4000,
               slack: float = 1e-13, rtol: float = 1e-12) -> float:
    """The largest ``r`` with ``|R| <= 1`` on the whole segment ``(0, r]`` of an axis.

    The segment is ``[-r, 0)`` for ``axis="real"`` and ``i(0, r]`` for ``axis="imag"``.
    ``R`` is scanned on a grid of ``n_scan`` points (linear up to 10, logarithmic beyond,
    up to ``r_max``); the first point where ``|R| > 1 + slack`` is then bracketed and
    bisected to ``rtol`` relative.

    Parameters
    ----------
    R : method or callable
        A method (name, class, instance), whose ``R`` is measured by
        :func:`stability_function`, or a callable mapping a complex array to ``R``.
    axis : {"real", "imag"}
    r_max : float
        Largest ``r`` scanned; ``math.inf`` is returned when ``|R| <= 1`` up to it.
    slack : float
        ``|R| <= 1 + slack`` counts as stable (rounding of a step near ``|R| = 1``).

    Returns
    -------
    float
        The limit ``r``: 0.0 when ``|R| > 1 + slack`` already at the first scan point
        (``10 / (n_scan // 2)``; shorter stable segments are not resolved), ``inf`` when no
        unstable point was found up to ``r_max``.
    """
    if axis not in ("real", "imag"):
        raise ValueError(f"`axis` must be 'real' or 'imag', got {axis!r}")
    if not callable(R) or isinstance(R, type):
        m = resolve_method(R)

        def R(z, _m=m):  # noqa: E731
            return stability_function(_m, z)

    unit = -1.0 if axis == "real" else 1j
    n_lin = n_scan // 2
    grid = np.concatenate([np.linspace(10.0 / n_lin, 10.0, n_lin),
                           np.geomspace(10.0, r_max, n_scan - n_lin)[1:]]) if r_max > 10 else \
        np.linspace(r_max / n_scan, r_max, n_scan)
    bad = np.nonzero(np.abs(R(unit * grid)) > 1 + slack)[0]
    if bad.size == 0:
        return math.inf
    i = int(bad[0])
    if i == 0:  # unstable arbitrarily close to 0 (at the scan's resolution grid[0])
        return 0.0
    hi, lo = float(grid[i]), float(grid[i - 1])
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if abs(R(np.array([unit * mid]))[0]) > 1 + slack:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def blowup_step(method: MethodLike, lambdas: Sequence[float], *, n_steps: int = 1000,
                h_range: Optional[tuple] = None, n_grid: int = 64, rounds: int = 4) -> float:
    """The smallest step ``h`` at which ``n_steps`` steps of ``method`` on ``y' = diag(lambdas) y``
    end with ``|y_N| > |y_0|`` (``y_0`` all ones): the step-size threshold of blow-up.

    The method's own ``step`` is iterated ``n_steps`` times; many candidate steps run as one
    batch (the field ``h lam`` stepped with unit step, exact for this autonomous linear
    problem), and the bracket around the first blow-up is refined ``rounds`` times on a
    grid of ``n_grid`` (relative resolution about ``n_grid**-rounds``).

    Parameters
    ----------
    method : method name, class or instance
    lambdas : sequence of float
        Eigenvalues of the diagonal test problem (real, negative for a threshold).
    h_range : (float, float), optional
        Initial bracket; default ``(1e-3, 1e2) / max|lambda|``.

    Returns
    -------
    float
        The threshold step (``inf`` if no step in the bracket blows up).
    """
    m = resolve_method(method)
    lam = torch.as_tensor(np.asarray(lambdas, dtype=np.float64))
    scale = float(lam.abs().max())
    lo, hi = h_range if h_range is not None else (1e-3 / scale, 1e2 / scale)
    geometric = True
    for _ in range(rounds):
        hs = np.geomspace(lo, hi, n_grid) if geometric else np.linspace(lo, hi, n_grid)
        rate = torch.as_tensor(hs)[:, None] * lam[None, :]  # (n_grid, d): h * lam per candidate
        y = torch.ones_like(rate)
        for _ in range(n_steps):
            y = _linear_step(m, rate, y)
        grew = (y.norm(dim=1) > math.sqrt(lam.numel())).numpy()
        idx = np.nonzero(grew)[0]
        if idx.size == 0:
            return math.inf
        i = int(idx[0])
        if i == 0:
            return float(hs[0])
        lo, hi = float(hs[i - 1]), float(hs[i])
        geometric = False
    return 0.5 * (lo + hi)
