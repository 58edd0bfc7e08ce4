"""B1-B4 for every registered method (the registry, not a hand-kept list)."""

import math

import numpy as np
import pytest

import solvers
from odenet.analysis import (axis_limit, blowup_step, stability_function, stability_region,
                             tableau_stability_function)
from odenet.jobs._stab_b import CLAIMED_AXIS_LIMITS, closed_form

ALL = sorted(n for n, c in solvers.METHODS.items() if c.one_step)  # the methods with an R(z)
OWN_LOOP = sorted(n for n, c in solvers.METHODS.items() if not c.one_step)
RK = [n for n in ALL if getattr(solvers.METHODS[n], "tableau", None) is not None]


def _grid(n=40):
    x = np.linspace(-7, 3, n)
    y = np.linspace(-6, 6, n)
    return x[None, :] + 1j * y[:, None]


@pytest.mark.parametrize("name", RK)
def test_b1_step_matches_tableau(name):
    z = _grid()
    cls = solvers.METHODS[name]
    got = stability_function(name, z)
    ref = tableau_stability_function(cls.tableau, z)
    scale = np.maximum(1.0, np.abs(ref))
    if not cls.implicit:  # rounding of the step's own partial sums (large for dopri8)
        from odenet.analysis import tableau_rounding_scale

        scale = np.maximum(scale, tableau_rounding_scale(cls.tableau, z))
    tol = 1e-10 if cls.implicit else 1e-12
    assert np.max(np.abs(got - ref) / scale) <= tol


@pytest.mark.parametrize("name", [n for n in ALL if closed_form(n)[1] == "CLAIMS.md"])
def test_b1_closed_forms(name):
    z = _grid()
    ref, _ = closed_form(name)
    tol = 1e-10 if solvers.METHODS[name].implicit else 1e-12
    got = stability_function(name, z)
    assert np.max(np.abs(got - ref(z)) / np.maximum(1, np.abs(ref(z)))) <= tol


def test_b1_quoted_coefficients():
    m = 32
    circle = np.exp(2j * np.pi * np.arange(m) / m)
    c = np.fft.fft(stability_function("tsit5", circle)).real / m
    assert abs(c[6] - 0.001432) < 5e-7
    c = np.fft.fft(stability_function("fehlberg2", circle)).real / m
    assert abs(c[3] - 0.000973) < 5e-7


@pytest.mark.parametrize("name", ALL)
def test_b2_axis_limits(name):
    if name in CLAIMED_AXIS_LIMITS:
        want = CLAIMED_AXIS_LIMITS[name]
    else:
        ref, _ = closed_form(name)
        want = (axis_limit(ref, "real"), axis_limit(ref, "imag"))
    for ax, w in zip(("real", "imag"), want):
        got = axis_limit(name, ax)
        if math.isinf(w) or w == 0.0:
            assert got == w, (ax, got)
        else:
            assert abs(got - w) <= 1e-4 * w, (ax, got, w)


def test_own_loop_methods_have_no_stability_function():
    assert OWN_LOOP == ["explicit_adams", "fixed_adams", "implicit_adams", "scipy_solver"]
    for name in OWN_LOOP:
        with pytest.raises(ValueError, match=f"{name}' runs its own loop.*no one-step stability function"):
            stability_function(name, [-1.0])


def test_b2_known_values():
    assert abs(axis_limit("rk4", "imag") - 2 * math.sqrt(2)) < 1e-9
    assert abs(axis_limit("heun3", "imag") - math.sqrt(3)) < 1e-9
    assert abs(axis_limit("euler", "real") - 2.0) < 1e-9
    assert axis_limit("euler", "imag") == 0.0
    assert axis_limit("implicit_euler", "real") == math.inf


@pytest.mark.parametrize("name", [n for n in ALL if solvers.METHODS[n].implicit])
def test_b3_implicit_a_stable(name):
    x = -np.geomspace(1e-3, 1e6, 60)
    r = np.concatenate([stability_function(name, x), stability_function(name, 1j * -x)])
    assert np.max(np.abs(r)) <= 1 + 1e-12


def test_b3_named_implicit():
    y = 1j * np.geomspace(1e-3, 1e6, 60)
    assert np.max(np.abs(np.abs(stability_function("implicit_euler", y)) - (1 + np.abs(y) ** 2) ** -0.5)) < 1e-12
    for name in ("implicit_midpoint", "trapezoid"):
        assert np.max(np.abs(np.abs(stability_function(name, y)) - 1)) < 1e-12
        assert abs(stability_function(name, [-1e6])[0] + 1) < 1e-5
    for name in ("implicit_euler", "kvaerno3", "kvaerno5"):
        assert abs(stability_function(name, [-1e6])[0]) < 1e-5


_EXPLICIT = [n for n in ALL if not solvers.METHODS[n].implicit]


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in ("euler", "rk4", "dopri5") else pytest.mark.slow)
                                  for n in _EXPLICIT])
def test_b4_blowup_threshold(name):
    r = CLAIMED_AXIS_LIMITS.get(name, (None,))[0]
    if r is None:
        r = axis_limit(closed_form(name)[0], "real")
    h = blowup_step(name, [-1.0, -10.0, -100.0], n_steps=1000, h_range=(0.25 * r / 100, 4 * r / 100))
    assert abs(h - r / 100) <= 1e-3 * r / 100


def test_stability_region_shape_and_errors():
    a = stability_region("euler", [-1.0, 0.0], [0.0, 1.0, 2.0])
    assert a.shape == (3, 2)
    assert abs(a[0, 0]) < 1e-15  # R(-1) = 0
    with pytest.raises(ValueError, match="unknown method"):
        stability_function("nope", [0.0])
    with pytest.raises(ValueError, match="axis"):
        axis_limit("euler", "diagonal")
