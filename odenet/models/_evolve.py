"""Evolve every sample of a batch along its own time grid in ONE batched solve.

This module is the only place where per-sample times meet the solver. Every time-series
model calls :func:`evolve` (through :class:`SeriesODEBlock`), so switching to the
solver's native per-sample grids (``solvers.solve(field, h, t)`` with ``t`` of shape
``(B, K)``, the field receiving a ``(B,)`` time tensor) is a change of this one function:
replace the body of :func:`evolve` by that call; :class:`SampleClock` then goes.

How it works now: sample ``b`` has its own times ``t[b, 0] <= ... <= t[b, K-1]``. The solve
runs in a shared normalised time ``s in [0, K-1]``, with an exact per-sample change of
variables ``t_b(s)`` that maps ``s = k`` to ``t[b, k]``::

    dh_b/ds = t_b'(s) * field(t_b(s), h_b)

- ``K = 2`` (from ``t0`` to ``t1``): ``t_b(s) = t0_b + s (t1_b - t0_b)``, the plain rescaling;
- ``K > 2``: on ``s in [k, k+1]``, ``t_b(s) = t[b, k] + h_bk * phi(s - k)`` with the smoothstep
  ``phi(u) = 3u^2 - 2u^3``, so ``t_b'(s) = h_bk * 6u(1 - u)`` is continuous (zero at every
  knot) and a step or a Runge-Kutta stage that lands on a knot is not ambiguous; adaptive
  methods are told to step onto the knots (``step_t``).

A zero-length gap (``t[b, k+1] == t[b, k]``, e.g. padding) gives ``dh_b/ds = 0`` there: an
identity step. No union grid of all samples' times, no Python loop over samples.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import nn

import solvers

from .._block import ODEBlock

__all__ = ["evolve", "SampleClock", "SeriesODEBlock"]


class SampleClock:
    """The map from the shared solve time ``s`` to each sample's time (see the module docstring).

    ``clock(s)`` returns ``(k, u, t_b, dt_ds)``: the interval index (int), the offset in it
    ``u = s - k`` (float), the per-sample times ``(B,)`` and ``dt_b/ds`` ``(B,)``.
    """

    def __init__(self, t: torch.Tensor):
        if t.ndim != 2 or t.shape[1] < 2:
            raise ValueError(f"per-sample times must be (B, K) with K >= 2, got {tuple(t.shape)}")
        self.t = t
        self.h = t[:, 1:] - t[:, :-1]  # (B, K-1)
        self.K = t.shape[1]

    def __call__(self, s: torch.Tensor):
        s_f = float(s)
        k = min(max(int(s_f), 0), self.K - 2)
        u = s_f - k
        h = self.h[:, k]
        if self.K == 2:
            return k, u, self.t[:, 0] + u * h, h
        return k, u, self.t[:, k] + h * (u * u * (3 - 2 * u)), h * (6 * u * (1 - u))


def evolve(field: Callable, h0: torch.Tensor, t: torch.Tensor, *, method: str = "rk4", steps: Optional[int] = 1,
           rtol: float = 1e-3, atol: float = 1e-4, gradient: str = "direct", options: Optional[dict] = None,
           params: Optional[list] = None) -> solvers.Solution:
    """Solve ``dh_b/dt = field(t_b, h_b)`` for every sample ``b`` along its own times ``t[b]``.

    Parameters
    ----------
    field : callable
        ``field(t, h)`` with ``t`` the per-sample times ``(B,)`` (float64) and ``h`` the
        state ``(B, ...)``; returns ``dh/dt`` shaped like ``h``.
    h0 : Tensor (B, ...)
        The state at ``t[:, 0]``.
    t : Tensor (B, K)
        Per-sample times, monotonic within each sample (all increasing or all decreasing
        in ``k``; equal neighbours are identity steps), ``K >= 2``.
    method, steps, rtol, atol, gradient, options
        The solver configuration (as in :class:`odenet.ODEBlock`); ``steps`` is the number of
        fixed steps per interval ``[t[b, k], t[b, k+1]]`` (ignored by adaptive methods).
    params : list of Tensor, optional
        Parameters of ``field`` for gradient modes that need them (default ``field.parameters()``).

    Returns
    -------
    solvers.Solution
        ``ys`` of shape ``(K, B, ...)``: the state of every sample at each of its times;
        ``stats`` counts the work of the one solve.
    """
    clock = SampleClock(t)
    shape = (-1,) + (1,) * (h0.ndim - 1)

    def reparametrised(s, h):
        _, _, t_b, dt_ds = clock(s)
        return dt_ds.to(h.dtype).view(shape) * field(t_b, h)

    opts = dict(options or {})
    cls = solvers.METHODS[method]
    if cls.adaptive:
        if clock.K > 2:
            opts.setdefault("step_t", torch.arange(1, clock.K - 1, dtype=torch.float64).tolist())
    elif "step_size" not in opts and "grid_constructor" not in opts:
        opts["step_size"] = 1.0 / (steps or 1)
    opts.setdefault("check_finite", False)
    if gradient != "direct" and params is None:
        params = [p for p in field.parameters() if p.requires_grad] if isinstance(field, nn.Module) else []
    s = torch.arange(clock.K, dtype=torch.float64, device=h0.device)
    return solvers.solve(reparametrised, h0, s, method=method, rtol=rtol, atol=atol, options=opts,
                         gradient=gradient, params=params)


class SeriesODEBlock(ODEBlock):
    """An :class:`odenet.ODEBlock` whose field is evolved along per-sample time grids.

    The solver configuration (``method``, ``steps`` per observation interval, ``rtol``,
    ``atol``, ``gradient``, ``options``) is the block's own, so ``configure``/``using`` swap
    the solver of a trained time-series model exactly as they do for an image model.
    :meth:`evolve` appends each solve's stats; ``last_stats`` / ``nfe_forward`` /
    ``nfe_backward`` sum them over the current forward (:meth:`reset_stats` starts one).
    """

    def __init__(self, field: nn.Module, *, method: str = "rk4", steps: Optional[int] = 1, rtol: float = 1e-3,
                 atol: float = 1e-4, gradient: str = "direct", options: Optional[dict] = None):
        if not solvers.METHODS.get(method, solvers.METHODS["rk4"]).adaptive and steps is None:
            steps = 1
        super().__init__(field, method=method, t1=1.0, steps=steps, rtol=rtol, atol=atol, gradient=gradient,
                         options=options)

    def reset_stats(self) -> None:
        self._stats = []

    def evolve(self, h: torch.Tensor, t: torch.Tensor, field: Optional[Callable] = None) -> torch.Tensor:
        """States ``(K, B, ...)`` of :func:`evolve` with this block's field and configuration.

        ``field`` replaces the block's field for this call (e.g. a closure that feeds the
        block's field a control path); its parameters are still the block's.
        """
        cfg = self._cfg
        params = [p for p in self.parameters() if p.requires_grad] if cfg["gradient"] != "direct" else None
        sol = evolve(field or self.field, h, t, method=cfg["method"], steps=cfg["steps"], rtol=cfg["rtol"],
                     atol=cfg["atol"], gradient=cfg["gradient"], options=cfg["options"], params=params)
        self._stats.append(sol.stats)
        return sol.ys


def _stats_sum(blocks: List[SeriesODEBlock]) -> tuple[int, int]:
    fwd = sum(b.nfe_forward for b in blocks if b.last_stats is not None)
    bwd = sum(b.nfe_backward for b in blocks if b.last_stats is not None)
    return fwd, bwd
