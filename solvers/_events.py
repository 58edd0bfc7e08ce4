"""Events: zero crossings of ``fn(t, y)`` located on the method's own dense output.

After every accepted step the loop's ``on_accept`` hook evaluates ``fn`` at the step's end
(one evaluation and one host synchronisation per step, only in solves with events). Where
the sign changed, the root is found on the step's interpolant, so no extra steps are
taken: the interpolant is sampled once at 8 Chebyshev–Lobatto fractions of the step (exact
for every interpolant of degree <= 7, which all methods of the shared loop have) and the
Illinois variant of regula falsi, safeguarded by bisection, runs on that Lagrange form,
per sample and vectorised. The event time carries implicit-function-theorem gradients::

    dt_e/dp = -(dg/dp + dg/dy dy/dp) / (dg/dt + dg/dy y'(t_e))

(``y'`` is the derivative of the interpolant), and the event state moves with it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, List

import numpy as np
import torch

from ._problem import split_state

__all__ = ["Event", "EventTracker", "ift_reroute", "lagrange"]

_N = 8
_S = -np.cos(np.pi * np.arange(_N) / (_N - 1))  # Chebyshev–Lobatto points in [-1, 1]
_NODES = (_S + 1.0) / 2.0  # the same as fractions of the step, 0 and 1 included
_C = np.linalg.inv(np.vander(_S, _N, increasing=True))  # (power, node): monomials in s -> Lagrange basis
_DC = (np.arange(1, _N)[:, None] * _C[1:]) * 2.0  # d/dtheta = 2 d/ds


@dataclasses.dataclass(frozen=True)
class Event:
    """An event ``fn(t, y) = 0`` for :func:`solvers.solve` (``events=``).

    Parameters
    ----------
    fn : callable
        ``fn(t, y)`` returning a 0-dim tensor (one event for the whole state) or a ``[B]``
        tensor, one value per sample along the first dimension of a tensor ``y0``. A
        per-sample ``fn`` is first called with a 0-dim ``t`` and then with a ``[B]`` tensor
        of per-sample times: write it elementwise in ``t``.
    terminal : bool
        A terminal event stops its sample at the first crossing; otherwise every
        crossing is recorded and the solve goes on.
    direction : {0, 1, -1}
        ``1``: only crossings where ``fn`` rises (negative to non-negative, in the
        direction of integration); ``-1``: only falling ones; ``0``: both.
    tol : float
        Width in time at which root location stops; ``0`` (default) locates the root of the
        interpolant to floating-point resolution.
    """

    fn: Callable
    terminal: bool = True
    direction: int = 0
    tol: float = 0.0

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Event `fn` must be callable as fn(t, y), got {type(self.fn).__name__}")
        if not isinstance(self.terminal, bool):
            raise TypeError(f"Event `terminal` must be a bool, got {self.terminal!r}")
        if self.direction not in (-1, 0, 1) or isinstance(self.direction, bool):
            raise ValueError(f"Event `direction` must be 1 (rising), -1 (falling) or 0 (both), got {self.direction!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not (0 <= self.tol < math.inf):
            raise ValueError(f"Event `tol` must be a finite non-negative number, got {self.tol!r}")


def lagrange(Y: torch.Tensor, theta: torch.Tensor, deriv: bool = False) -> torch.Tensor:
    """The interpolant (or its theta-derivative) from its values ``Y`` ``[8, ...]`` at the nodes.

    ``theta`` 0-dim: one fraction for the whole state; ``[B]``: one per sample (dim 1 of Y).
    """
    s = (2.0 * theta.to(torch.float64) - 1.0)[..., None]  # (..., 1)
    if deriv:
        w = (s ** torch.arange(_N - 1, dtype=torch.float64, device=s.device)) @ torch.as_tensor(_DC, device=s.device)
    else:
        w = (s ** torch.arange(_N, dtype=torch.float64, device=s.device)) @ torch.as_tensor(_C, device=s.device)
    w = w.to(Y.dtype)  # (8,) or (B, 8)
    if w.ndim == 1:
        return torch.tensordot(w, Y, dims=1)
    return torch.einsum("bj,jb...->b...", w, Y)


class EventTracker:
    """The ``on_accept`` hook of a solve with one :class:`Event` (see the module docstring)."""

    def __init__(self, event: Event, method, y0: torch.Tensor, t0: float, reverse: bool, shapes, tdtype, stats=None):
        self.event, self.method, self.shapes, self.reverse = event, method, shapes, reverse
        self.stats = stats  # counts the event function's calls (``Stats.n_event_evals``)
        self.tdtype, self.device = tdtype, y0.device
        with torch.no_grad():
            g0 = event.fn(torch.tensor(-t0 if reverse else t0, dtype=tdtype, device=self.device), self._user_y(y0))
        if not isinstance(g0, torch.Tensor):
            raise TypeError(f"the event function must return a tensor, got {type(g0).__name__}")
        self.batched = g0.ndim == 1
        if g0.ndim > 1 or (self.batched and (shapes is not None or y0.ndim == 0 or g0.shape[0] != y0.shape[0])):
            raise ValueError(
                f"the event function returned shape {tuple(g0.shape)}; it must return a 0-dim tensor (one event) or, "
                f"for a tensor y0 of shape [B, ...], one value per sample [B] (y0 has shape {tuple(y0.shape)})"
            )
        self.B = g0.shape[0] if self.batched else None
        self.g_prev = g0.detach()
        self.active = torch.ones(self.B or (), dtype=torch.bool, device=self.device)
        self.n_active = self.B or 1
        self.records: List[tuple] = []  # (mask, t_user, y, ydot), full batch
        self.stopped_at = None  # loop time at which a terminal event ended the solve
        self._y0_like = torch.zeros_like(y0.detach())

    def _user_y(self, y):
        return split_state(y, self.shapes) if self.shapes is not None else y

    def _user_t(self, u):
        return (-u if self.reverse else u).to(self.tdtype)

    def _g(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.batched and u.ndim == 0:
            u = u.expand(self.B)
        if self.stats is not None:
            self.stats.n_event_evals += 1
        return self.event.fn(self._user_t(u), self._user_y(y))

    def __call__(self, res, tn: float, t1: float, get_f1) -> bool:
        with torch.no_grad():
            g1 = self._g(torch.tensor(t1, dtype=torch.float64, device=self.device), res.y1)
            gp = self.g_prev
            cross = ((gp < 0) & (g1 >= 0)) if self.event.direction >= 0 else torch.zeros_like(self.active)
            if self.event.direction <= 0:
                cross = cross | ((gp > 0) & (g1 <= 0))
            cross = cross & self.active
            any_cross, bad = torch.stack([cross.any(), ~torch.isfinite(g1).all()]).tolist()
        if bad:
            raise ValueError(f"the event function returned NaN or inf at t={(-t1 if self.reverse else t1):.6g}; it must be finite along the solution")
        self.g_prev = g1
        if not any_cross:
            return False
        h = t1 - tn
        Y = self.method.interpolate(res, torch.tensor(_NODES, dtype=torch.float64, device=self.device), get_f1)  # (8, ...)
        theta = self._locate(Y.detach(), tn, h, gp, g1, cross)
        u_e = tn + theta * h
        y_e = lagrange(Y, theta)
        ydot = lagrange(Y.detach(), theta, deriv=True) / h * (-1.0 if self.reverse else 1.0)  # dy/dt in user time
        self.records.append((cross, self._user_t(u_e), y_e, ydot))
        if self.event.terminal:
            self.active = self.active & ~cross
            self.n_active -= int(cross.sum()) if self.batched else 1
            if self.n_active == 0:
                self.stopped_at = float(u_e.detach().max())
                return True
        return False

    def _locate(self, Y, tn, h, ga, gb, cross) -> torch.Tensor:
        """Illinois regula falsi with bisection safeguard, per sample, on the interpolant."""
        shape = ga.shape
        a = torch.zeros(shape, dtype=torch.float64, device=self.device)
        b = torch.ones_like(a)
        fa, fb = ga.to(torch.float64), gb.to(torch.float64)
        sa = torch.sign(fa)
        xtol = max(self.event.tol / h, 4 * torch.finfo(torch.float64).eps) if h > 0 else 1.0
        bisect = torch.zeros(shape, dtype=torch.bool, device=self.device)
        last = torch.zeros(shape, dtype=torch.int8, device=self.device)  # side kept last time: 1 = a moved, -1 = b moved
        for _ in range(200):
            width = b - a
            if not bool(((width > xtol) & cross).any()):
                break
            denom = fb - fa
            c = b - fb * width / torch.where(denom == 0, torch.ones_like(denom), denom)
            c = torch.where(bisect | (denom == 0) | ~(c > a) | ~(c < b), (a + b) / 2, c)
            with torch.no_grad():
                fc = self._g(tn + c * h, lagrange(Y, c)).to(torch.float64)
            before = (torch.sign(fc) == sa) & (fc != 0)
            a, fa_new = torch.where(before, c, a), torch.where(before, fc, fa)
            b, fb_new = torch.where(before, b, c), torch.where(before, fb, fc)
            fb_new = torch.where(before & (last == 1), fb_new / 2, fb_new)  # Illinois: halve the stale end
            fa_new = torch.where(~before & (last == -1), fa_new / 2, fa_new)
            fa, fb = fa_new, fb_new
            last = torch.where(before, torch.ones_like(last), -torch.ones_like(last))
            bisect = (b - a) > 0.5 * width
        return torch.where(cross, b, torch.ones_like(b))  # the first point on the crossed side

    def results(self, ift: bool):
        """``(event_t, event_y, mask)`` in the user's time and layout (see :class:`Event`)."""
        recs = [(m, *ift_reroute(self._fn_user, t, y, yd)) if ift else (m, t, y) for m, t, y, yd in self.records]
        if not self.batched:
            ts = [t for _, t, _ in recs]
            ys = [y for _, _, y in recs]
            if self.event.terminal:
                if ts:
                    return ts[0], self._split(ys[0]), torch.tensor(True, device=self.device)
                return torch.tensor(math.nan, dtype=self.tdtype, device=self.device), self._split(self._zeros()), torch.tensor(False, device=self.device)
            t = torch.stack(ts) if ts else torch.empty(0, dtype=self.tdtype, device=self.device)
            y = torch.stack(ys) if ys else self._zeros().new_empty((0, *self._zeros().shape))
            return t, self._split(y), torch.ones(len(ts), dtype=torch.bool, device=self.device)
        counts = torch.zeros(self.B, dtype=torch.long)
        bs, ks, tv, yv = [], [], [], []
        for m, t, y in recs:
            idx = torch.nonzero(m.cpu()).reshape(-1)
            bs.append(idx)
            ks.append(counts[idx].clone())
            counts[idx] += 1
            tv.append(t[idx.to(t.device)])
            yv.append(y[idx.to(y.device)])
        K = max(int(counts.max()), 1)
        y_shape = self._zeros().shape[1:]
        event_t = torch.full((self.B, K), math.nan, dtype=self.tdtype, device=self.device)
        event_y = self._zeros().new_zeros((self.B, K, *y_shape))
        mask = torch.zeros((self.B, K), dtype=torch.bool, device=self.device)
        if bs:
            ii = (torch.cat(bs).to(self.device), torch.cat(ks).to(self.device))
            event_t = event_t.index_put(ii, torch.cat(tv))
            event_y = event_y.index_put(ii, torch.cat(yv))
            mask = mask.index_put(ii, torch.ones(len(ii[0]), dtype=torch.bool, device=self.device))
        if self.event.terminal:
            return event_t[:, 0], event_y[:, 0], mask[:, 0]
        return event_t, event_y, mask

    def _fn_user(self, t, y):
        return self.event.fn(t, self._user_y(y))

    def _zeros(self):
        return self._y0_like

    def _split(self, y):
        return split_state(y, self.shapes) if self.shapes is not None else y


def ift_reroute(fn: Callable, t_e: torch.Tensor, y_e: torch.Tensor, ydot: torch.Tensor):
    """The event time and state with implicit-function-theorem gradients.

    ``fn(t, y)`` is the event function (0-dim, or ``[B]`` for per-sample ``t`` ``[B]``),
    ``y_e`` the state at the fixed time ``t_e`` (its graph reaches ``y0`` and parameters),
    ``ydot`` the time derivative of the solution there. The values are unchanged.
    Where ``dg/dt + dg/dy ydot`` is zero (a tangential crossing) no gradient flows.
    """
    te = t_e.detach()
    with torch.enable_grad():
        tt = te.clone().requires_grad_(True)
        yy = y_e.detach().requires_grad_(True)
        g = fn(tt, yy)
        gt, gy = torch.autograd.grad(g.sum(), (tt, yy), allow_unused=True) if g.requires_grad else (None, None)
    gt = torch.zeros_like(te) if gt is None else gt
    gy = torch.zeros_like(yy) if gy is None else gy
    dims = tuple(range(te.ndim, y_e.ndim))
    D = (gt.to(torch.float64) + (gy * ydot).sum(dim=dims).to(torch.float64)).detach()
    D = torch.where((D == 0) | ~torch.isfinite(D), torch.full_like(D, math.inf), D)
    g = fn(te, y_e)
    if not (isinstance(g, torch.Tensor) and g.requires_grad):
        return te, y_e
    t_out = te - ((g - g.detach()).to(torch.float64) / D).to(te.dtype)
    shift = (t_out - te).to(y_e.dtype).reshape(*te.shape, *([1] * len(dims)))
    return t_out, y_e + ydot.detach() * shift
