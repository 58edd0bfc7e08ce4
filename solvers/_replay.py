"""Re-running a plain fixed-step solve without rebuilding its problem.

A solve that took the plain fixed-step loop (:func:`solvers._integrate._fixed_plain`: a
one-stage method such as Euler, ``gradient="direct"``, a plain tensor state, no events, no
dense output, no per-step callbacks) did nothing per step but ``y = y + a_i f(t_i, y)``.
Everything else it did - checking ``y0``, ``t``, the tolerances and options, building the
grid and the stage times, validating the field's first output - depends only on the
problem's description, not on ``y0``'s values. :class:`PlainReplay` keeps the grid of one
such solve and repeats its loop on a new ``y0`` of the same shape, dtype and device: the same
operations in the same order, so the same bits (tests/test_replay.py pins it against
``solvers.solve``). :class:`odenet.ODEBlock` uses it to bring a ResNet block's per-forward
cost down to the hand-written loop's.
"""

from __future__ import annotations

import torch

from ._problem import check_field_output
from ._solution import Stats


class PlainReplay:
    """The plain loop of one finished solve, re-runnable on a new initial state.

    Made by ``solvers.solve`` (``Solution._replay``); holds the solve's function, its stage
    times (tensors, as the field saw them) and the step weights ``a_i = h_i c``.
    """

    __slots__ = ("func", "_grid", "_times", "_alphas", "shape", "dtype", "device")

    def __init__(self, func, step_ts, hs, c: float, n: int, y0: torch.Tensor):
        # every plain solve makes one; the step tuples are built when first needed
        self.func, self._grid = func, (step_ts, hs, c, n)
        self._times = self._alphas = None
        self.shape, self.dtype, self.device = y0.shape, y0.dtype, y0.device

    @property
    def times(self) -> tuple:
        """The time tensor the field saw at each step."""
        if self._times is None:
            step_ts, _, _, n = self._grid
            self._times = tuple(step_ts[i][0] for i in range(n))
        return self._times

    @property
    def alphas(self) -> tuple:
        """Each step's weight ``a_i = h_i c`` of ``y + a_i f(t_i, y)``."""
        if self._alphas is None:
            _, hs, c, n = self._grid
            self._alphas = tuple(hs[i] * c for i in range(n))
        return self._alphas

    def bound(self, func) -> "PlainReplay":
        """The same recorded loop calling ``func``: shares the step times and weights, so a
        kept template (``func=None``: solvers._plans) costs no tensor indexing per use."""
        other = PlainReplay.__new__(PlainReplay)
        other.func, other._grid = func, self._grid
        other._times, other._alphas = self.times, self.alphas
        other.shape, other.dtype, other.device = self.shape, self.dtype, self.device
        return other

    def matches(self, func, y0: torch.Tensor) -> bool:
        """Whether :meth:`run` on ``(func, y0)`` repeats the recorded solve."""
        return func is self.func and self.matches_state(y0)

    def matches_state(self, y0: torch.Tensor) -> bool:
        """Whether ``y0`` has the recorded solve's shape, dtype and device."""
        return y0.shape == self.shape and y0.dtype == self.dtype and y0.device == self.device

    def run(self, y0: torch.Tensor, calls=None):
        """``(y(t1), stats)`` from ``y0``, as the recorded solve computes it.

        ``calls``, if given, holds one callable per step with ``calls[i](y) == func(t_i, y)``
        (a caller that knows what its function does at each stage time, such as a layerwise
        field's blocks, saves the time lookup per step). The field's first output is checked
        in full (type, shape, dtype), as the solve's field wrapper checks it, and every later
        one for its shape, as the loop does.
        """
        shape, y, func, times = self.shape, y0, self.func, self.times
        # Each step frees f's output before the old state (``z = ...; k = None; y = z``), the
        # order of ``y = y + f(y)``: the allocator then hands the next step the buffers the
        # hand-written loop would get. Freeing the old state first (``y = y + k; k = None``)
        # measured 2-3 % slower on a small MLP (benchmarks/bench_block.py).
        for i, a in enumerate(self.alphas):
            k = func(times[i], y) if calls is None else calls[i](y)
            if i == 0 or not isinstance(k, torch.Tensor) or k.shape != shape:
                check_field_output(k, y)
            z = y + k if a == 1.0 else torch.add(y, k, alpha=a)
            k = None
            y = z
        n = len(times)
        return y, Stats(n_f_evals=n, n_steps=n, n_accepted=n)
