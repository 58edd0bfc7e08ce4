"""Embedded explicit Runge–Kutta pairs (adaptive): one tableau and one tiny class each.

Coefficients are the published ones: Bogacki–Shampine 3(2) and Dormand–Prince 5(4) with
Shampine's dense output (as tabulated in Hairer, Nørsett & Wanner, and scipy), Tsitouras
5(4) with its own fourth-order interpolant.
"""

import numpy as np
from numpy.polynomial import Polynomial

from ._explicit import AbstractAdaptiveExplicitRK, polynomial_dense
from ._tableau import ButcherTableau

__all__ = ["Bosh3", "Dopri5", "Tsit5", "AdaptiveHeun", "Fehlberg2"]

_BOSH3 = ButcherTableau(
    c=[0.0, 0.5, 0.75, 1.0],
    a=[
        [],
        [0.5],
        [0.0, 0.75],
        [0.2222222222222222, 0.3333333333333333, 0.4444444444444444],
    ],
    b=[0.2222222222222222, 0.3333333333333333, 0.4444444444444444, 0.0],
    b_error=[0.06944444444444445, -0.08333333333333333, -0.1111111111111111, 0.125],
    b_dense=[
        [1.0, -1.3333333333333333, 0.5555555555555556],
        [0.0, 1.0, -0.6666666666666666],
        [0.0, 1.3333333333333333, -0.8888888888888888],
        [0.0, -1.0, 1.0],
    ],
)

_DOPRI5 = ButcherTableau(
    c=[0.0, 0.2, 0.3, 0.8, 0.8888888888888888, 1.0, 1.0],
    a=[
        [],
        [0.2],
        [0.075, 0.225],
        [0.9777777777777777, -3.7333333333333334, 3.5555555555555554],
        [2.9525986892242035, -11.595793324188385, 9.822892851699436, -0.2908093278463649],
        [2.8462752525252526, -10.757575757575758, 8.906422717743473, 0.2784090909090909, -0.2735313036020583],
        [0.09114583333333333, 0.0, 0.44923629829290207, 0.6510416666666666, -0.322376179245283, 0.13095238095238096],
    ],
    b=[0.09114583333333333, 0.0, 0.44923629829290207, 0.6510416666666666, -0.322376179245283, 0.13095238095238096, 0.0],
    b_error=[-0.0012326388888888888, 0.0, 0.0042527702905061394, -0.03697916666666667, 0.05086379716981132, -0.0419047619047619, 0.025],
    b_dense=[
        [1.0, -2.8535800653862835, 3.0717434641059005, -1.1270175653862835],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 4.023133379230305, -6.249321565289, 2.675424484351598],
        [0.0, -3.7324019615885042, 10.068970589843675, -5.685526961588504],
        [0.0, 2.5548038301849423, -6.399112377351017, 3.5219323679207912],
        [0.0, -1.3744241142186024, 3.272657752246729, -1.7672812570757455],
        [0.0, 1.3824689317781436, -3.764937863556287, 2.382468931778144],
    ],
)

_TSIT5_B = [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774]


def _tsit5_dense() -> np.ndarray:
    """Tsitouras' interpolant: seven polynomials in theta, given in factored form."""
    x = Polynomial([0.0, 1.0])
    polys = [
        -1.0530884977290216 * x * (x - 1.3299890189751412) * (x**2 - 1.4364028541716351 * x + 0.7139816917074209),
        0.1017 * x**2 * (x**2 - 2.1966568338249754 * x + 1.2949852507374631),
        2.490627285651252793 * x**2 * (x**2 - 2.38535645472061657 * x + 1.57803468208092486),
        -16.54810288924490272 * (x - 1.21712927295533244) * (x - 0.61620406037800089) * x**2,
        47.37952196281928122 * (x - 1.203071208372362603) * (x - 0.658047292653547382) * x**2,
        -34.87065786149660974 * (x - 1.2) * (x - 0.666666666666666667) * x**2,
        2.5 * (x - 1) * (x - 0.6) * x**2,
    ]
    dense = polynomial_dense(polys)
    # The published factors carry ~1e-16 rounding; make theta=1 reproduce b exactly.
    target = np.array(_TSIT5_B + [0.0])
    dense[:, -1] += target - dense.sum(axis=1)
    return dense


_TSIT5 = ButcherTableau(
    c=[0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0],
    a=[
        [],
        [0.161],
        [-0.008480655492356989, 0.335480655492357],
        [2.8971530571054935, -6.359448489975075, 4.3622954328695815],
        [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
        [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.02826905039406838],
        _TSIT5_B,
    ],
    b=_TSIT5_B + [0.0],
    b_error=[
        0.00178001105222577714,
        0.0008164344596567469,
        -0.007880878010261995,
        0.1447110071732629,
        -0.5823571654525552,
        0.45808210592918697,
        -1 / 66,
    ],
    b_dense=_tsit5_dense(),
)

_ADAPTIVE_HEUN = ButcherTableau(c=[0.0, 1.0], a=[[], [1.0]], b=[0.5, 0.5], b_error=[-0.5, 0.5])

_FEHLBERG2 = ButcherTableau(
    c=[0.0, 0.5, 1.0],
    a=[[], [0.5], [1 / 256, 255 / 256]],
    b=[1 / 512, 255 / 256, 1 / 512],
    b_error=[-1 / 512, 0.0, 1 / 512],
)


class Bosh3(AbstractAdaptiveExplicitRK):
    """Bogacki–Shampine 3(2). Order 3, embedded order 2, 4 stages, FSAL.

    Dense output: cubic Hermite (third order), free.
    """

    name, order, error_order, tableau = "bosh3", 3, 2, _BOSH3


class Dopri5(AbstractAdaptiveExplicitRK):
    """Dormand–Prince 5(4). Order 5, embedded order 4, 7 stages, FSAL.

    Dense output: Shampine's fourth-order interpolant, free.
    """

    name, order, error_order, tableau = "dopri5", 5, 4, _DOPRI5


class Tsit5(AbstractAdaptiveExplicitRK):
    """Tsitouras 5(4). Order 5, embedded order 4, 7 stages, FSAL.

    Dense output: Tsitouras' fourth-order interpolant, free.
    """

    name, order, error_order, tableau = "tsit5", 5, 4, _TSIT5


class AdaptiveHeun(AbstractAdaptiveExplicitRK):
    """Heun–Euler 2(1). Order 2, embedded order 1, 2 stages.

    Dense output: cubic Hermite (the end derivative is reused as the next first stage).
    """

    name, order, error_order, tableau = "adaptive_heun", 2, 1, _ADAPTIVE_HEUN


class Fehlberg2(AbstractAdaptiveExplicitRK):
    """Runge–Kutta–Fehlberg 2(1). Order 2, embedded order 1, 3 stages.

    Dense output: cubic Hermite.
    """

    name, order, error_order, tableau = "fehlberg2", 2, 1, _FEHLBERG2
