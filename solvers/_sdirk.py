"""Adaptive stiff methods: Kværnø's L-stable, stiffly accurate ESDIRK pairs.

Reference: A. Kværnø, "Singly diagonally implicit Runge–Kutta methods with an explicit
first stage", BIT 44 (2004) 489–502. Coefficients as published (the 3(2) pair in closed
form in its diagonal ``gamma``, the 5(4) pair to 17 digits).
"""

from __future__ import annotations

import numpy as np

from ._base import AbstractAdaptiveSolver, AbstractImplicitSolver
from ._implicit import AbstractESDIRK, _ESDIRKMixin
from ._registry import register_method
from ._tableau import ButcherTableau

__all__ = ["AbstractAdaptiveESDIRK", "Kvaerno3", "Kvaerno5", "SDIRK2", "TRBDF2"]


def _kvaerno3() -> ButcherTableau:
    # gamma: the root in (0, 1) of 6 g^3 - 18 g^2 + 9 g - 1 = 0 that makes the method L-stable
    g = float(sorted(r.real for r in np.roots([6.0, -18.0, 9.0, -1.0]) if 0.3 < r.real < 0.5)[0])
    a31 = (-4 * g**2 + 6 * g - 1) / (4 * g)
    a32 = (-2 * g + 1) / (4 * g)
    a41 = (6 * g - 1) / (12 * g)
    a42 = -1 / ((24 * g - 12) * g)
    a43 = (-6 * g**2 + 6 * g - 1) / (6 * g - 3)
    b = [a41, a42, a43, g]
    b_hat = [a31, a32, g, 0.0]  # the embedded (second-order) solution is stage 3
    return ButcherTableau(
        c=[0.0, 2 * g, 1.0, 1.0],
        a=[[0.0], [g, g], [a31, a32, g], [a41, a42, a43, g]],
        b=b,
        b_error=[x - y for x, y in zip(b, b_hat)],
    )


def _kvaerno5() -> ButcherTableau:
    g = 0.26
    a = [
        [0.0],
        [g, g],
        [0.13, 0.84033320996790809, g],
        [0.22371961478320505, 0.47675532319799699, -0.06470895363112615, g],
        [0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998, g],
        [0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676, g],
        [0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403, 0.06962479448202728, g],
    ]
    c = [float(sum(row)) for row in a]
    b = a[-1]
    b_hat = a[-2] + [0.0]
    return ButcherTableau(c=c, a=a, b=b, b_error=[x - y for x, y in zip(b, b_hat)])


def _sdirk2() -> ButcherTableau:
    # Alexander's 2-stage SDIRK (gamma = 1 - 1/sqrt 2), written with an explicit first
    # stage of zero weight so the ESDIRK stepper runs it (f0 is evaluated anyway and reused)
    g = 1.0 - np.sqrt(0.5)
    return ButcherTableau(c=[0.0, g, 1.0], a=[[0.0], [0.0, g], [0.0, 1.0 - g, g]], b=[0.0, 1.0 - g, g])


def _trbdf2() -> ButcherTableau:
    # TR-BDF2 (Bank et al. 1985) as an ESDIRK with gamma = 2 - sqrt 2; embedded third-order
    # weights of Hosea & Shampine, "Analysis and implementation of TR-BDF2", APNUM 20 (1996)
    g = 2.0 - np.sqrt(2.0)
    d = g / 2.0
    w = np.sqrt(2.0) / 4.0
    b = [w, w, d]
    b_hat = [(1.0 - w) / 3.0, (3.0 * w + 1.0) / 3.0, d / 3.0]
    return ButcherTableau(c=[0.0, g, 1.0], a=[[0.0], [d, d], [w, w, d]], b=b, b_error=[x - y for x, y in zip(b, b_hat)])


class AbstractAdaptiveESDIRK(_ESDIRKMixin, AbstractAdaptiveSolver, AbstractImplicitSolver):
    """An embedded ESDIRK pair (``tableau`` with ``b_error``) for stiff problems.

    A failed root solve rejects the step and the loop shrinks it.
    """


@register_method
class Kvaerno3(AbstractAdaptiveESDIRK):
    """Kværnø's ESDIRK 3(2): order 3 with an embedded order 2, 4 stages (3 implicit).

    L-stable and stiffly accurate; ``gamma ~= 0.4359``; FSAL (the last stage is
    ``f(t1, y1)``). Dense output: cubic Hermite.
    """

    name, order, error_order, tableau = "kvaerno3", 3, 2, _kvaerno3()


@register_method
class Kvaerno5(AbstractAdaptiveESDIRK):
    """Kværnø's ESDIRK 5(4): order 5 with an embedded order 4, 7 stages (6 implicit).

    L-stable and stiffly accurate; ``gamma = 0.26``; FSAL. Dense output: cubic Hermite.
    Exception to rule 5 of :mod:`solvers._base`: stage 3 sits at ``c = 1.23``, so the field
    is evaluated slightly past ``t1`` (do not use it across a ``jump_t`` discontinuity).
    """

    name, order, error_order, tableau = "kvaerno5", 5, 4, _kvaerno5()


@register_method
class SDIRK2(AbstractESDIRK):
    """Alexander's two-stage SDIRK: order 2, L-stable, stiffly accurate (``gamma = 1 - 1/sqrt 2``).

    Two implicit stages sharing one Newton matrix ``I - gamma h J``. FSAL. Fixed step.
    Dense output: cubic Hermite.
    """

    name, order, tableau = "sdirk2", 2, _sdirk2()


@register_method
class TRBDF2(AbstractAdaptiveESDIRK):
    """TR-BDF2: a trapezoidal stage to ``t0 + gamma h`` then BDF2, ``gamma = 2 - sqrt 2``.

    Order 2 with Hosea–Shampine's embedded order-3 estimate; 3 stages (2 implicit, one
    shared Newton matrix); L-stable and stiffly accurate; FSAL. Dense output: cubic Hermite.
    The controller uses the error estimate's order 2 (``min(order, error_order)``).
    """

    name, order, error_order, tableau = "trbdf2", 2, 3, _trbdf2()
