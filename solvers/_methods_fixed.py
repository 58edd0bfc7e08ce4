"""Fixed-step explicit Runge–Kutta methods: one tableau and one tiny class each."""

from ._explicit import AbstractExplicitRK
from ._tableau import ButcherTableau

__all__ = ["Euler", "Midpoint", "Heun2", "Heun3", "RK4", "RK4Classic"]

_EULER = ButcherTableau(c=[0.0], a=[[]], b=[1.0])
_MIDPOINT = ButcherTableau(c=[0.0, 0.5], a=[[], [0.5]], b=[0.0, 1.0])
_HEUN2 = ButcherTableau(c=[0.0, 1.0], a=[[], [1.0]], b=[0.5, 0.5])
_HEUN3 = ButcherTableau(c=[0.0, 1 / 3, 2 / 3], a=[[], [1 / 3], [0.0, 2 / 3]], b=[0.25, 0.0, 0.75])
_RK4_38 = ButcherTableau(
    c=[0.0, 1 / 3, 2 / 3, 1.0],
    a=[[], [1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]],
    b=[0.125, 0.375, 0.375, 0.125],
)
_RK4_CLASSIC = ButcherTableau(
    c=[0.0, 0.5, 0.5, 1.0],
    a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
    b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
)


class Euler(AbstractExplicitRK):
    """Forward Euler, ``y1 = y0 + h f(t0, y0)``: the residual block of a ResNet.

    Order 1, 1 stage. Dense output: linear (``interp="linear"``) or cubic Hermite.
    """

    name, order, tableau = "euler", 1, _EULER


class Midpoint(AbstractExplicitRK):
    """Explicit midpoint rule. Order 2, 2 stages."""

    name, order, tableau = "midpoint", 2, _MIDPOINT


class Heun2(AbstractExplicitRK):
    """Heun's method (explicit trapezoid). Order 2, 2 stages."""

    name, order, tableau = "heun2", 2, _HEUN2


class Heun3(AbstractExplicitRK):
    """Heun's third-order method. Order 3, 3 stages."""

    name, order, tableau = "heun3", 3, _HEUN3


class RK4(AbstractExplicitRK):
    """Kutta's 3/8-rule fourth-order method (torchdiffeq's ``rk4``). Order 4, 4 stages."""

    name, order, tableau = "rk4", 4, _RK4_38


class RK4Classic(AbstractExplicitRK):
    """The classic fourth-order Runge–Kutta method. Order 4, 4 stages."""

    name, order, tableau = "rk4_classic", 4, _RK4_CLASSIC
