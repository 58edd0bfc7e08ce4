"""Adams–Bashforth(–Moulton) on a fixed grid: torchdiffeq's ``explicit_adams``,
``implicit_adams`` and ``fixed_adams``.

The scheme is torchdiffeq 0.2.5's (``_impl/fixed_adams.py``), reimplemented:

- the derivative ``f(t_n, y_n)`` of every step start is kept, newest first, up to
  ``max_order - 1`` of them (``max_order`` 12 by default, at most 12);
- while fewer than 3 are known the step is Runge–Kutta 4 (the 3/8 rule), so the first two
  steps start the method;
- then the predictor is Adams–Bashforth of order ``k = min(#known, max_order - 1)``,
  ``y1 = y0 + h sum_j beta_j f_{n-j}``, with the constant-step coefficients scaled by the
  current step (as torchdiffeq does on any grid);
- ``implicit=True`` (``fixed_adams``, ``implicit_adams``) corrects with Adams–Moulton of
  order ``k + 1``, ``y1 = y0 + h (m_0 f(t1, y1) + sum_j m_{j+1} f_{n-j})``, by
  ``max_iters`` functional iterations (4 by default).

Differences from torchdiffeq, on purpose:

1. The corrector always runs ``max_iters`` iterations (a P(EC)^m scheme, of the order of
   the corrector) instead of stopping when successive iterates agree to ``rtol``/``atol``:
   that test needs a host synchronisation per iteration, which the fixed-step loops never
   make. The answer differs from torchdiffeq's by at most the corrector's convergence
   tolerance.
2. torchdiffeq warns when the iteration has not converged and drops the oldest stored
   derivative (so the next steps run at a lower order); here nothing is dropped, and an
   iteration that *diverges* (its last correction larger than its first, i.e.
   ``h |m_0| Lip(f) > 1``: the step is too large for functional iteration) ends the solve
   with ``Status.ROOT_FINDER`` (:class:`~solvers.RootFinderError`), checked once after the
   loop, and the outputs stop before that step.

Declared order 4 (torchdiffeq's); the default ``max_order=12`` reaches higher order on
smooth problems. Multistep methods run their own loop (:mod:`solvers._ownloop`): direct
backpropagation and the adjoint work, ``gradient="checkpoint"`` does not.
"""

from __future__ import annotations

import torch

from ._base import hermite
from ._integrate import Outcome, fixed_grid
from ._ownloop import AbstractOwnLoopSolver
from ._registry import register_method
from ._solution import Status

__all__ = ["AbstractAdams", "FixedAdams", "ImplicitAdams", "ExplicitAdams", "bashforth", "moulton"]

_MAX_ORDER = 12
_MIN_ORDER = 4


def _adams_coefficients(order: int, implicit: bool) -> list:
    """Constant-step Adams coefficients (exact rationals -> float), newest value first.

    Bashforth of order ``k`` uses ``f_n .. f_{n-k+1}``; Moulton of order ``k`` uses
    ``f_{n+1} .. f_{n-k+2}``. ``beta_j = int_0^1 prod_{i != j} (s - x_i)/(x_j - x_i) ds``
    over the nodes ``x = 0, -1, ...`` (Bashforth) or ``1, 0, -1, ...`` (Moulton).
    """
    from fractions import Fraction

    nodes = [Fraction(1 - i) for i in range(order)] if implicit else [Fraction(-i) for i in range(order)]
    out = []
    for j, xj in enumerate(nodes):
        poly = [Fraction(1)]  # coefficients of prod_{i != j} (s - x_i), increasing powers
        denom = Fraction(1)
        for i, xi in enumerate(nodes):
            if i == j:
                continue
            poly = [Fraction(0)] + poly
            for k in range(len(poly) - 1):
                poly[k] -= xi * poly[k + 1]
            denom *= xj - xi
        out.append(float(sum(c / (k + 1) for k, c in enumerate(poly)) / denom))
    return out


def bashforth(order: int) -> list:
    """Adams–Bashforth weights of ``order`` (``[3/2, -1/2]`` for 2)."""
    return _adams_coefficients(order, implicit=False)


def moulton(order: int) -> list:
    """Adams–Moulton weights of ``order`` (``[1/2, 1/2]`` for 2), the implicit one first."""
    return _adams_coefficients(order, implicit=True)


_BASHFORTH = [None] + [bashforth(k) for k in range(1, _MAX_ORDER + 1)]
_MOULTON = [None] + [moulton(k) for k in range(1, _MAX_ORDER + 1)]


def _weighted(coeffs, fs, h):
    acc = fs[0] * coeffs[0]
    for c, f in zip(coeffs[1:], fs[1:]):
        acc = torch.add(acc, f, alpha=c)
    return acc * h


class AbstractAdams(AbstractOwnLoopSolver):
    """Fixed-grid Adams–Bashforth(–Moulton); see the module docstring for the scheme."""

    order = 4
    stage_c = (0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0)  # the RK4 (3/8 rule) starting steps
    #: options under which the registry's convergence test checks the declared order
    convergence_options: dict = {"max_order": 4}
    _implicit_default = True

    def __init__(self, **options):
        super().__init__(**options)
        mo = options.get("max_order", _MAX_ORDER)
        if isinstance(mo, bool) or not isinstance(mo, int) or not 1 <= mo <= _MAX_ORDER:
            raise ValueError(f"option `max_order` of {self.name!r} must be an int in [1, {_MAX_ORDER}], got {mo!r}")
        mi = options.get("max_iters", 4)
        if isinstance(mi, bool) or not isinstance(mi, int) or mi < 1:
            raise ValueError(f"option `max_iters` of {self.name!r} must be a positive int, got {mi!r}")
        imp = options.get("implicit", self._implicit_default)
        if not isinstance(imp, bool):
            raise TypeError(f"option `implicit` of {self.name!r} must be a bool, got {type(imp).__name__}")
        self.max_order, self.max_iters, self.corrector = mo, mi, imp

    def integrate(self, field, y0, t, cfg, stats):
        plan = fixed_grid(field, y0, t, self, cfg)
        if isinstance(plan, Outcome):
            return plan
        tl, gl, hs, step_ts, ends, track = plan
        n = len(gl) - 1
        if cfg.record is not None:
            cfg.record.extend(gl)
        hist = []  # f at the step starts, newest first
        keep = max(self.max_order - 1, 1)
        outs, j, y = [y0], 1, y0
        growth = []  # per corrected step: |last correction| / |first correction| (device)
        growth_step = []
        f0 = None
        for i in range(n):
            ts, h = step_ts[i], hs[i]
            if f0 is None:
                f0 = field(ts[0], y)
            hist.insert(0, f0)
            del hist[keep:]
            k = min(len(hist), self.max_order - 1)
            if k < _MIN_ORDER - 1:
                y1 = _rk4_38(field, ts, y, h, f0)
            else:
                dy = _weighted(_BASHFORTH[k], hist[:k], h)
                if self.corrector:
                    m = _MOULTON[k + 1]
                    delta = _weighted(m[1:], hist[:k], h)
                    first = last = None
                    for _ in range(self.max_iters):
                        new = field(ts[-1], y + dy) * (m[0] * h) + delta
                        last = torch.linalg.vector_norm((new - dy).detach())
                        first = last if first is None else first
                        dy = new
                    if self.max_iters > 1:
                        growth.append(last / first.clamp_min(torch.finfo(last.dtype).tiny))
                        growth_step.append(i)
                y1 = y + dy
            t1 = gl[i + 1]
            f1 = None if cfg.perturb or i == n - 1 else field(ends[i + 1], y1)  # the next step's f0
            while j < len(tl) and tl[j] <= t1:
                if tl[j] == t1:
                    outs.append(y1)
                else:
                    theta = (t[j] - ends[i]) / h if track else (tl[j] - gl[i]) / h
                    if cfg.interp == "cubic":
                        fe = f1 if f1 is not None else field(ends[i + 1], y1)
                        th = theta.reshape(1).to(torch.float64) if isinstance(theta, torch.Tensor) else torch.tensor([theta], dtype=torch.float64, device=y.device)
                        outs.append(hermite(_Step(y, f0, y1, h), th, fe)[0])
                    else:
                        outs.append(y + theta * (y1 - y))
                j += 1
            y, f0 = y1, f1
        stats.n_steps += n
        stats.n_accepted += n
        if growth:  # the one synchronisation: did a corrector iteration diverge?
            g = torch.stack(growth).to(torch.float64).cpu()
            bad = torch.nonzero(~(g <= 1.0))
            if bad.numel():
                i = growth_step[int(bad[0, 0])]
                keep_outs = sum(1 for x in tl if x <= gl[i])
                detail = (f"the Adams-Moulton corrector diverged at step {i} (t={-gl[i] if cfg.reverse else gl[i]:.6g}): its last correction is "
                          f"{float(g[bad[0, 0]]):.3g} times its first (h |m0| Lip(f) > 1); try a smaller `step_size`, "
                          "implicit=False, or an implicit method such as 'radau5'")
                return Outcome(outs[:keep_outs], Status.ROOT_FINDER, gl[i], detail)
        return Outcome(outs)


class _Step:
    """The fields :func:`solvers._base.hermite` reads."""

    __slots__ = ("y0", "f0", "y1", "h")

    def __init__(self, y0, f0, y1, h):
        self.y0, self.f0, self.y1, self.h = y0, f0, y1, h


def _rk4_38(field, ts, y, h, k1):
    """Runge–Kutta 4 by the 3/8 rule (torchdiffeq's ``rk4_alt_step_func``)."""
    k2 = field(ts[1], y + k1 * (h / 3))
    k3 = field(ts[2], y + (k2 - k1 / 3) * h)
    k4 = field(ts[3], y + (k1 - k2 + k3) * h)
    return y + (k1 + 3 * (k2 + k3) + k4) * (h / 8)


@register_method
class FixedAdams(AbstractAdams):
    """Adams–Bashforth–Moulton on a fixed grid (torchdiffeq's ``fixed_adams``).

    Order 4 declared; predictor AB of order up to ``max_order - 1``, corrector AM one
    higher, ``max_iters`` functional iterations; RK4 (3/8) start. Options ``implicit``,
    ``max_iters``, ``max_order``. Dense output: linear, or cubic Hermite (``interp``).
    """

    name = "fixed_adams"
    option_names = ("implicit", "max_iters", "max_order")


@register_method
class ImplicitAdams(AbstractAdams):
    """Adams–Bashforth–Moulton on a fixed grid (torchdiffeq's ``implicit_adams``, the same
    scheme as ``fixed_adams``)."""

    name = "implicit_adams"
    option_names = ("implicit", "max_iters", "max_order")


@register_method
class ExplicitAdams(AbstractAdams):
    """Adams–Bashforth on a fixed grid (torchdiffeq's ``explicit_adams``).

    Order 4 declared (AB of order ``max_order - 1``: order 4 needs ``max_order >= 5``);
    RK4 (3/8) start. Options ``max_order``, ``max_iters`` (accepted, unused, as torchdiffeq).
    """

    name = "explicit_adams"
    option_names = ("max_iters", "max_order")
    convergence_options = {"max_order": 5}
    _implicit_default = False

