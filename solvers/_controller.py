"""Step-size controllers and the initial step. They work on Python floats: the loop
synchronises once per step to read the error ratio, and nothing here is differentiated."""

from __future__ import annotations

import abc
import math
from typing import Callable

import torch

__all__ = ["AbstractController", "IController", "PIController", "initial_step"]


class AbstractController(abc.ABC):
    """Proposes the next step size from the last one and its error ratio.

    ``ratio`` is ``norm(error / (atol + rtol * |y|))``: a step is accepted when
    ``ratio <= 1``. ``propose(h, ratio, accepted)`` returns the next step size (> 0).
    """

    @abc.abstractmethod
    def reset(self, error_order: int) -> None:
        """Start a new solve for a method whose error estimate has order ``error_order``."""

    def accept(self, ratio: float) -> bool:
        return ratio <= 1.0

    @abc.abstractmethod
    def propose(self, h: float, ratio: float, accepted: bool) -> float:
        """The next step size after a step of size ``h`` with error ``ratio``."""

    #: Whether :meth:`propose_batch` is implemented (needed on per-sample time grids).
    batched = False

    def init_batch(self, n: int, device) -> dict:
        """Per-sample controller state for a per-sample grid of ``n`` samples."""
        raise NotImplementedError(f"{type(self).__name__} has no per-sample (batched) step-size control")

    def propose_batch(self, h: torch.Tensor, ratio: torch.Tensor, accepted: torch.Tensor, state: dict) -> torch.Tensor:
        """``[B]`` next step sizes from ``[B]`` steps, ratios and accept flags; updates ``state``.

        Samples are independent: each one follows exactly the sequence :meth:`propose`
        would give it in a solve of its own. Runs on the device, no synchronisation.
        """
        raise NotImplementedError(f"{type(self).__name__} has no per-sample (batched) step-size control")


class PIController(AbstractController):
    """Proportional–integral step-size control (Gustafsson; Hairer & Wanner II, IV.2).

    ``factor = safety * r_n^(-(icoeff + pcoeff)/k) * r_{n-1}^(pcoeff/k)``, ``k`` one more
    than the embedded order, clipped to ``[dfactor, ifactor]``; after a rejection the step
    never grows. ``pcoeff=0, icoeff=1`` is the classical I controller.
    """

    def __init__(self, pcoeff: float = 0.4, icoeff: float = 0.3, safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2):
        for name, v in (("safety", safety), ("ifactor", ifactor), ("dfactor", dfactor)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"`{name}` must be a positive finite number, got {v!r}")
        if not (0 < safety <= 1):
            raise ValueError(f"`safety` must be in (0, 1], got {safety}")
        if dfactor >= 1 or ifactor <= 1:
            raise ValueError(f"need dfactor < 1 < ifactor, got dfactor={dfactor}, ifactor={ifactor}")
        self.pcoeff, self.icoeff = float(pcoeff), float(icoeff)
        self.safety, self.ifactor, self.dfactor = float(safety), float(ifactor), float(dfactor)
        self._k = 1.0
        self._prev = 1.0
        self._rejected = False

    def reset(self, error_order: int) -> None:
        self._k = float(error_order + 1)
        self._prev = 1.0
        self._rejected = False

    def propose(self, h: float, ratio: float, accepted: bool) -> float:
        if not math.isfinite(ratio):
            return h * self.dfactor
        if ratio == 0.0:
            factor = self.ifactor
        else:
            factor = self.safety * ratio ** (-(self.icoeff + self.pcoeff) / self._k)
            if self.pcoeff:
                factor *= self._prev ** (self.pcoeff / self._k)
            factor = min(self.ifactor, max(self.dfactor, factor))
        if accepted:
            self._prev = max(ratio, 1e-10)
            if self._rejected:  # the first step accepted after a rejection does not grow
                factor = min(1.0, factor)
        else:
            factor = min(1.0, factor)
        self._rejected = not accepted
        return h * factor

    batched = True

    def init_batch(self, n: int, device) -> dict:
        return {
            "prev": torch.ones(n, dtype=torch.float64, device=device),
            "rejected": torch.zeros(n, dtype=torch.bool, device=device),
        }

    def propose_batch(self, h: torch.Tensor, ratio: torch.Tensor, accepted: torch.Tensor, state: dict) -> torch.Tensor:
        r = ratio.to(torch.float64)
        finite = torch.isfinite(r)
        safe = torch.where(finite & (r > 0), r, 1.0)  # (Python scalars: no filled tensor per step)
        factor = self.safety * safe ** (-(self.icoeff + self.pcoeff) / self._k)
        if self.pcoeff:
            factor = factor * state["prev"] ** (self.pcoeff / self._k)
        factor = factor.clamp(min=self.dfactor, max=self.ifactor)
        factor = torch.where(r == 0, self.ifactor, factor)
        capped = ~accepted | state["rejected"]  # no growth on or right after a rejection
        factor = torch.where(capped, factor.clamp(max=1.0), factor)
        factor = torch.where(finite, factor, self.dfactor)
        state["prev"] = torch.where(accepted & finite, r.clamp(min=1e-10), state["prev"])
        state["rejected"] = torch.where(finite, ~accepted, state["rejected"])
        return h * factor


class IController(PIController):
    """Integral (classical) step-size control: ``factor = safety * ratio^(-1/k)``."""

    def __init__(self, safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2):
        super().__init__(pcoeff=0.0, icoeff=1.0, safety=safety, ifactor=ifactor, dfactor=dfactor)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors in float32 for the norms (their range cannot hold them)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def initial_step(func: Callable, t0: float, y0: torch.Tensor, f0: torch.Tensor, order: int, rtol, atol, norm: Callable, make_t: Callable, direction_span: float, t_shown=None) -> float:
    """Hairer's starting step (Hairer, Nørsett & Wanner I, II.4): one extra evaluation.

    ``t_shown``: ``t0`` as the user sees it (negated for decreasing time), for messages."""
    with torch.no_grad():
        y0w, f0w = _wide(y0), _wide(f0)
        scale = atol + torch.abs(y0w) * rtol
        d0, d1 = (float(v) for v in torch.stack([torch.as_tensor(norm(y0w / scale)).real, torch.as_tensor(norm(f0w / scale)).real]).tolist())
        if not math.isfinite(d0):
            from ._problem import nonfinite_y0

            if not bool(torch.isfinite(y0).all()):
                raise nonfinite_y0()
            raise ValueError(
                f"the error norm returned {d0} for the finite initial state; a custom `norm` option must return a finite, "
                "non-negative scalar for finite input (check it, or remove it to use the RMS norm)"
            )
        if not math.isfinite(d1):
            from ._solution import NonFiniteStateError

            ts = t0 if t_shown is None else t_shown
            raise NonFiniteStateError(f"the vector field is non-finite at the initial time t={ts:.6g} (finite y0)", t=ts)
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        h0 = min(h0, direction_span)
        y1 = y0 + h0 * f0
        f1 = func(make_t(t0 + h0), y1)
        d2 = float(norm((_wide(f1) - f0w) / scale)) / h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1, direction_span)
