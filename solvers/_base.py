"""The contract between a method (one step) and the integration loop.

Rules for implementers of a method (subclass of :class:`AbstractSolver`):

1. Class attributes ``name``, ``order`` (of the propagated solution), ``adaptive`` and
   ``implicit`` describe the method; the registry ``solvers.METHODS`` maps ``name`` to the
   class. Adaptive methods also set ``error_order`` (order of the embedded solution).
2. ``stage_c`` is the tuple of stage times as fractions of the step. The loop builds the
   stage times ``ts[i] = t0 + stage_c[i] * h`` (0-dim tensors, in the dtype of ``t``) and
   passes them in; a method never does time arithmetic of its own, so the loop can nudge
   times across discontinuities and keep them differentiable when ``t`` requires grad.
3. ``step(func, ts, y0, h, f0)`` advances one step. ``h`` is a Python float, or a 0-dim
   tensor when gradients with respect to ``t`` are tracked. ``f0 = func(ts[0], y0)`` is
   supplied by the loop (it is the previous step's last stage for FSAL methods).
4. ``step`` returns a :class:`StepResult`: the new state ``y1``, ``f1 = func(t1, y1)`` if the
   method computed it anyway (FSAL) else ``None``, the local error estimate (adaptive
   methods) and ``ok=False`` when an implicit solve failed (the loop rejects or raises).
5. ``func`` is never evaluated outside ``[t0, t0 + h]``.
6. ``interpolate(step, thetas, get_f1)`` returns the dense output at ``t0 + theta*h`` for a
   1-D float64 tensor of ``thetas`` in ``[0, 1]``, stacked on dim 0. It may call
   ``get_f1()`` (cached, reused by the next step, so it costs no extra evaluation).
   ``interpolate_at(step, thetas, get_f1)`` is the same with ``thetas`` a list of Python
   floats (the loop's untracked outputs); by default it builds the tensor and calls
   ``interpolate``, and a method may compute its weights on the host instead.
7. Methods hold no per-solve state besides their options; one instance may serve many
   solves. Options are constructor keyword arguments listed in ``option_names``.
8. Steps never synchronise with the host (no ``.item()``, no ``bool(tensor)``); the loop
   owns the only synchronisation per adaptive step.
"""

from __future__ import annotations

import abc
from typing import Callable, List, Optional, Sequence, Union

import torch

__all__ = ["AbstractSolver", "AbstractAdaptiveSolver", "AbstractImplicitSolver", "StepResult"]

Time = Union[float, torch.Tensor]


def describe_info(info: Optional[dict], skip: tuple = ()) -> str:
    """A failed step's ``info`` as ``"key=value, ..."`` for an error message (keys in ``skip`` left out)."""
    return ", ".join(f"{k}={v}" for k, v in (info or {}).items() if k not in skip)


class StepResult:
    """What one step returns (see rule 4 of :mod:`solvers._base`)."""

    __slots__ = ("y0", "y1", "f0", "f1", "error", "ks", "h", "ts", "ok", "info", "cache", "func")

    def __init__(self, y0, y1, f0, f1, error, ks, h, ts, ok=True, info=None, func=None):
        self.y0 = y0
        self.y1 = y1
        self.f0 = f0
        self.f1 = f1
        self.error = error
        self.ks = ks
        self.h = h
        self.ts = ts
        self.ok = ok
        self.info = info
        self.cache = None
        self.func = func


class AbstractSolver(abc.ABC):
    """One step of a numerical integrator; see the module docstring for the contract."""

    name: str = ""
    order: int = 0
    adaptive: bool = False
    implicit: bool = False
    stage_c: Sequence[float] = (0.0,)
    option_names: tuple = ()
    #: ``True`` when ``step`` advances one step on its own (a one-step method: it has a
    #: stability function ``R(z)`` and can be replayed by ``gradient="checkpoint"``);
    #: ``False`` for methods that run their own loop (multistep Adams, ``scipy_solver``)
    one_step: bool = True
    #: ``True`` for a fixed-step method whose ``step`` never fails and keeps no per-step
    #: state (the explicit Runge–Kutta step): the fixed loop may then run it on its plain path
    plain_step: bool = False
    #: ``c`` when ``step`` is exactly ``y1 = y0 + (h*c) * f0`` (forward Euler: 1.0), else None
    single_stage_weight: Optional[float] = None

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.option_names)) if options else None
        if unknown:
            valid = ", ".join(self.option_names) or "none"
            raise ValueError(f"method {self.name!r} got unknown option(s) {unknown}; its options are: {valid}")
        self.options = options

    @abc.abstractmethod
    def step(self, func: Callable, ts: Sequence[torch.Tensor], y0: torch.Tensor, h: Time, f0: torch.Tensor) -> StepResult:
        """Advance one step of size ``h`` from ``(ts[0], y0)``."""

    def interpolate(self, step: StepResult, thetas: torch.Tensor, get_f1: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Cubic Hermite dense output from ``y0, f0, y1, f1`` (third order)."""
        return hermite(step, thetas, get_f1())

    def interpolate_at(self, step: StepResult, thetas: Sequence[float], get_f1: Callable[[], torch.Tensor]) -> torch.Tensor:
        """:meth:`interpolate` at ``thetas`` given as Python floats (the loop's untracked
        outputs); a method may use them on the host (no tensor to build, none to read)."""
        return self.interpolate(step, torch.tensor(thetas, dtype=torch.float64, device=step.y0.device), get_f1)

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"


class AbstractAdaptiveSolver(AbstractSolver):
    """A method with an embedded error estimate of order ``error_order``."""

    adaptive = True
    error_order: int = 0

    def error_ratio(self, step: StepResult, scale: torch.Tensor, norm: Callable) -> torch.Tensor:
        """``norm(error / scale)``; methods with a special estimator override this."""
        return norm(step.error / scale)


class AbstractImplicitSolver(AbstractSolver):
    """A method whose stages are defined implicitly and solved by a root finder."""

    implicit = True


def hermite(step: StepResult, thetas: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """Cubic Hermite interpolation on one step, for a batch of ``thetas``."""
    th = thetas.to(step.y0.real.dtype)
    th2 = th * th
    th3 = th2 * th
    w = torch.stack([2 * th3 - 3 * th2 + 1, th3 - 2 * th2 + th, -2 * th3 + 3 * th2, th3 - th2], dim=1)  # (m, 4)
    h = step.h
    basis = torch.stack([step.y0, step.f0 * h, step.y1, f1 * h]).reshape(4, -1)  # (4, N)
    if basis.is_complex():
        w = w.to(basis.dtype)
    return (w @ basis).reshape(th.shape[0], *step.y0.shape)


def lincomb(y: Optional[torch.Tensor], h: Time, terms: List[tuple], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``y + h * sum(c * ks[j] for j, c in terms)`` with as few kernel launches as possible.

    ``terms`` holds ``(j, c)`` pairs with Python-float ``c``; zero coefficients are already
    dropped. With a float ``h`` the sum is a chain of fused ``add(alpha=...)``; with a tensor
    ``h`` (gradients with respect to time) the sum is formed first and scaled once.
    """
    if isinstance(h, float):
        if y is None:
            j, c = terms[0]
            out = ks[j] * (h * c)
            rest = terms[1:]
        else:
            out = y
            rest = terms
        for j, c in rest:
            out = torch.add(out, ks[j], alpha=h * c)
        return out
    j, c = terms[0]
    acc = ks[j] * c
    for j, c in terms[1:]:
        acc = torch.add(acc, ks[j], alpha=c)
    return acc * h if y is None else torch.addcmul(y, acc, h)  # y + acc * h in one kernel
