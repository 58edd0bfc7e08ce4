"""Dense output: the method's own interpolant over every accepted step of a solve.

Recorded only when asked (``solve(..., dense=True)``, ``odeint_dense``): the loop's
``on_accept`` hook keeps each accepted step's :class:`StepResult` (its stages carry the
autograd graph), so :meth:`DenseOutput.evaluate` is differentiable with respect to ``y0``,
the parameters of the field and the evaluation times. Memory is O(steps).
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch

from ._problem import split_state

__all__ = ["DenseRecorder", "DenseOutput", "odeint_dense"]


class DenseRecorder:
    """``on_accept`` hook that keeps ``(t0, t1, step, get_f1)`` of every accepted step."""

    def __init__(self):
        self.starts: List[float] = []
        self.ends: List[float] = []
        self.steps: list = []
        self.f1s: list = []

    def __call__(self, res, t0: float, t1: float, get_f1: Callable) -> bool:
        self.starts.append(t0)
        self.ends.append(t1)
        self.steps.append(res)
        self.f1s.append(get_f1)
        return False


class DenseOutput:
    """The interpolant of a finished solve on ``[t_start, t_end]`` (the user's time).

    ``post(t_user, ys)`` (optional) adjusts the values afterwards (frozen samples after a
    terminal event).
    """

    def __init__(self, rec: DenseRecorder, method, y0: torch.Tensor, t0: float, reverse: bool, shapes, tdtype, t_end: Optional[float] = None, post=None):
        self.rec, self.method, self.y0, self.reverse, self.shapes, self.tdtype = rec, method, y0, reverse, shapes, tdtype
        self.u0 = t0
        self.u1 = rec.ends[-1] if rec.ends else t0
        if t_end is not None:
            self.u1 = min(self.u1, t_end)
        self.post = post

    @property
    def span(self) -> tuple:
        """``(t_start, t_end)`` in the user's time."""
        s = -1.0 if self.reverse else 1.0
        return (s * self.u0, s * self.u1)

    def evaluate(self, t) -> object:
        if not isinstance(t, torch.Tensor):
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise TypeError(f"`t` must be a float or a 0-dim/1-D tensor of times, got {type(t).__name__}")
            t = torch.tensor(float(t), dtype=torch.float64)
        if t.ndim > 1:
            raise ValueError(f"`t` must be a 0-dim or 1-D tensor of times, got shape {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"`t` must be a floating-point tensor, got {t.dtype}")
        scalar = t.ndim == 0
        tt = t.reshape(-1).to(device=self.y0.device, dtype=torch.float64)
        u = -tt if self.reverse else tt  # (m,) loop time
        ul = u.detach().tolist()
        if any(not math.isfinite(x) or x < self.u0 or x > self.u1 for x in ul):
            lo, hi = sorted(self.span)
            bad = next(x for x in tt.detach().tolist() if not (lo <= x <= hi))
            raise ValueError(f"`t`={bad:.6g} is outside the solved span [{lo:.6g}, {hi:.6g}]; dense output is only defined there")
        if not ul:
            return self._shape(self.y0.new_empty((0, *self.y0.shape)), scalar, tt)
        starts = torch.tensor(self.rec.starts, dtype=torch.float64)
        if not self.rec.steps:  # a solve of zero length: only t0 is in the span
            return self._shape(self.y0.expand(len(ul), *self.y0.shape), scalar, tt)
        idx = (torch.searchsorted(starts, u.detach().cpu(), right=True) - 1).clamp_(0, len(self.rec.steps) - 1).tolist()
        order, parts = [], []
        for i in sorted(set(idx)):
            where = [k for k, v in enumerate(idx) if v == i]
            a, b = self.rec.starts[i], self.rec.ends[i]
            theta = (u[where] - a) / (b - a)  # (m_i,) float64, carries grad of t
            parts.append(self.method.interpolate(self.rec.steps[i], theta, self.rec.f1s[i]))
            order.extend(where)
        ys = torch.cat(parts) if len(parts) > 1 else parts[0]
        if order != sorted(order):
            inv = torch.empty(len(order), dtype=torch.long)
            inv[torch.tensor(order)] = torch.arange(len(order))
            ys = ys[inv.to(ys.device)]
        return self._shape(ys, scalar, tt)

    def _shape(self, ys, scalar, tt):
        if self.post is not None:
            ys = self.post(tt, ys)
        if self.shapes is not None:
            parts = split_state(ys, self.shapes)
            return tuple(p[0] for p in parts) if scalar else parts
        return ys[0] if scalar else ys


def odeint_dense(func: Callable, y0, t0, t1, *, rtol=1e-7, atol=1e-9, method: Optional[str] = None, options: Optional[dict] = None) -> Callable:
    """Solve from ``t0`` to ``t1`` and return ``dense_output_fn(t)``: torchdiffeq's ``odeint_dense``.

    ``dense_output_fn`` evaluates the method's own interpolant (cubic Hermite for methods
    without one) at a 0-dim or 1-D tensor ``t`` inside ``[t0, t1]``; it is differentiable
    with respect to ``y0``, the parameters of ``func`` and ``t``. Unlike torchdiffeq (dopri5
    and a tensor ``y0`` only) any method of the shared loop and tuple states work.
    """
    from ._api import solve

    def as_t(name, v):
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(f"`{name}` must be a single time, got shape {tuple(v.shape)}")
            return v.reshape(()).detach().to(torch.float64)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"`{name}` must be a float or a one-element tensor, got {type(v).__name__}")
        return torch.tensor(float(v), dtype=torch.float64)

    t = torch.stack([as_t("t0", t0), as_t("t1", t1)])
    if isinstance(t0, torch.Tensor) and t0.dtype.is_floating_point:
        t = t.to(t0.dtype)
    sol = solve(func, y0, t, method="dopri5" if method is None else method, rtol=rtol, atol=atol, options=options, dense=True)
    return sol.evaluate
