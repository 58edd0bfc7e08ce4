"""The explicit Runge–Kutta step shared by every explicit method."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ._base import AbstractAdaptiveSolver, AbstractSolver, StepResult, hermite, lincomb
from ._tableau import ButcherTableau

__all__ = ["AbstractExplicitRK", "AbstractAdaptiveExplicitRK"]


class _RKMixin:
    """Stage loop over a :class:`ButcherTableau`; subclasses set ``tableau``."""

    tableau: ButcherTableau

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        if tab is not None:
            if not tab.explicit:
                raise ValueError(f"{cls.__name__}: an explicit method needs a strictly lower-triangular tableau")
            cls.stage_c = tuple(float(c) for c in tab.c)
            cls._rows = tab.rows()
            cls._b = ButcherTableau.nonzero(tab.b)
            cls._e = ButcherTableau.nonzero(tab.b_error) if tab.b_error is not None else None
            cls._fsal = tab.fsal
        # Facts for the fixed loop's plain path (solvers._integrate._fixed_plain), derived
        # again for every subclass so that one overriding ``step`` loses them.
        plain = cls.step is _RKMixin.step and getattr(cls, "_rows", None) is not None and not cls.adaptive
        cls.plain_step = plain
        one = plain and len(cls._rows) == 1 and not cls._fsal and len(cls._b) == 1 and cls._b[0][0] == 0
        cls.single_stage_weight = cls._b[0][1] if one else None

    def step(self, func: Callable, ts: Sequence[torch.Tensor], y0: torch.Tensor, h, f0: torch.Tensor) -> StepResult:
        ks = [f0]
        rows = self._rows
        yi = y0
        for i in range(1, len(rows)):
            yi = lincomb(y0, h, rows[i], ks)
            ks.append(func(ts[i], yi))
        if self._fsal:
            y1, f1 = yi, ks[-1]
        else:
            y1, f1 = lincomb(y0, h, self._b, ks), None
        err = lincomb(None, h, self._e, ks) if self._e else None
        return StepResult(y0, y1, f0, f1, err, ks, h, ts, func=func)

    def interpolate(self, step: StepResult, thetas: torch.Tensor, get_f1: Callable) -> torch.Tensor:
        tab = self.tableau
        if tab.b_dense is None:
            return hermite(step, thetas, get_f1())
        ks = list(step.ks)
        if tab.a_extra is not None:
            ks = _extra_stages(self, step, ks)
        th = thetas.to(step.y0.real.dtype)
        powers = torch.arange(1, tab.b_dense.shape[1] + 1, device=th.device, dtype=th.dtype)
        theta_pow = th[:, None] ** powers  # (m, p)
        bd = _cached_dense(self, th.device, th.dtype)  # (s_dense, p)
        w = theta_pow @ bd.T  # (m, s_dense)
        kmat = torch.stack(ks).reshape(len(ks), -1)  # (s_dense, N)
        if kmat.is_complex():
            w = w.to(kmat.dtype)
        out = step.y0.reshape(1, -1) + (w @ kmat) * step.h
        return out.reshape(th.shape[0], *step.y0.shape)

    def interpolate_at(self, step: StepResult, thetas, get_f1: Callable) -> torch.Tensor:
        """The interpolant's weights ``theta^q b_dense`` computed on the host in float64 (one
        rounding to the state's dtype), then ``y0 + h * w @ k`` in one ``addmm``: three
        kernels instead of the ten of :meth:`interpolate` (a float ``h``, a real state)."""
        tab = self.tableau
        y0 = step.y0
        if tab.b_dense is None or tab.a_extra is not None or not isinstance(step.h, float) or y0.dtype not in (torch.float32, torch.float64):
            return super().interpolate_at(step, thetas, get_f1)
        rows = _dense_rows(tab)
        w = []  # (m, s): Horner in theta for each stage's polynomial theta * (c1 + theta * (c2 + ...))
        for th in thetas:
            wr = []
            for cs in rows:
                acc = 0.0
                for c in cs:
                    acc = acc * th + c
                wr.append(acc * th)
            w.append(wr)
        kmat = torch.stack(step.ks).reshape(len(step.ks), -1)  # (s, N)
        out = torch.addmm(y0.reshape(1, -1), torch.tensor(w, dtype=y0.dtype, device=y0.device), kmat, alpha=step.h)
        return out.reshape(len(thetas), *y0.shape)


#: ``b_dense`` as tensors, keyed (tableau, device, dtype), and as Python rows, keyed by the
#: tableau: shared by every instance of a method (a solve makes a new instance, and building
#: the tensor from numpy cost more than a step)
_DENSE: dict = {}


def _dense_rows(tab) -> tuple:
    """``b_dense`` as Python floats, each row from the highest power down (for Horner)."""
    rows = _DENSE.get(tab)
    if rows is None:
        rows = _DENSE[tab] = tuple(tuple(float(c) for c in r[::-1]) for r in tab.b_dense)
    return rows


def _cached_dense(method, device, dtype):
    from ._compile import compiling

    key = (method.tableau, device, dtype)
    bd = _DENSE.get(key)
    if bd is None:
        if compiling():  # traced: a constant of the graph, not a cache entry
            return torch.as_tensor(method.tableau.b_dense, dtype=dtype, device=device)
        with torch.inference_mode(False):  # a normal tensor even if first built under inference mode
            bd = _DENSE[key] = torch.as_tensor(method.tableau.b_dense, dtype=dtype, device=device)
    return bd


def _extra_stages(method, step: StepResult, ks):
    """Evaluate the dense-output-only stages once per step (cached on the step)."""
    if step.cache is not None:
        return step.cache
    tab = method.tableau
    s = tab.stages
    func = step.func
    t0 = step.ts[0]
    for r in range(tab.c_extra.shape[0]):
        terms = ButcherTableau.nonzero(tab.a_extra[r, : s + r])
        y = lincomb(step.y0, step.h, terms, ks)
        ks.append(func(t0 + float(tab.c_extra[r]) * step.h, y))
    step.cache = ks
    return ks


class AbstractExplicitRK(_RKMixin, AbstractSolver):
    """A fixed-step explicit Runge–Kutta method defined by its ``tableau``."""


class AbstractAdaptiveExplicitRK(_RKMixin, AbstractAdaptiveSolver):
    """An embedded explicit Runge–Kutta pair defined by its ``tableau`` (with ``b_error``)."""


def polynomial_dense(basis_polys, scale=1.0) -> np.ndarray:
    """Turn per-stage polynomials in theta (numpy ``Polynomial``) into ``b_dense`` rows.

    Each polynomial must vanish at theta = 0; row ``i`` holds its coefficients of
    ``theta^1 ... theta^p``.
    """
    p = max(len(poly.coef) for poly in basis_polys) - 1
    out = np.zeros((len(basis_polys), p))
    for i, poly in enumerate(basis_polys):
        coef = np.asarray(poly.coef, dtype=np.float64) * scale
        if abs(coef[0]) > 1e-14:
            raise ValueError("dense-output polynomials must vanish at theta = 0")
        out[i, : len(coef) - 1] = coef[1:]
    return out
