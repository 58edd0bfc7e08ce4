"""Property tests of every registered explicit Runge–Kutta tableau.

The order conditions are checked numerically through rooted trees (Butcher's theory): a
method has order ``p`` iff ``b . Phi(tau) = 1 / gamma(tau)`` for every rooted tree ``tau``
with at most ``p`` nodes, where ``Phi`` is the vector of elementary weights. The trees are
generated here (1, 1, 2, 4, 9, 20, 48, 115 trees of order 1..8), so the tests grow with the
registry and check every declared order, up to 8 for ``dopri8``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import solvers
from solvers import ButcherTableau

# --------------------------------------------------------------------------- rooted trees
# A tree is the sorted tuple of its children's trees; the single node is ().


def _add_leaf(tree: tuple) -> set:
    """All trees obtained from ``tree`` by attaching one new leaf to one of its nodes."""
    out = {tuple(sorted(tree + ((),)))}
    for i, child in enumerate(tree):
        for grown in _add_leaf(child):
            out.add(tuple(sorted(tree[:i] + (grown,) + tree[i + 1 :])))
    return out


@functools.lru_cache(maxsize=None)
def trees_of_order(n: int) -> tuple:
    if n == 1:
        return ((),)
    grown = set()
    for t in trees_of_order(n - 1):
        grown |= _add_leaf(t)
    return tuple(sorted(grown))


def order_of(tree: tuple) -> int:
    return 1 + sum(order_of(c) for c in tree)


def density(tree: tuple) -> int:
    """gamma(tau) = |tau| * prod gamma(children)."""
    g = order_of(tree)
    for c in tree:
        g *= density(c)
    return g


def stage_weights(tree: tuple, a: np.ndarray) -> np.ndarray:
    """The vector whose ``b``-weighted sum is the elementary weight of ``tree``."""
    g = np.ones(a.shape[0])
    for c in tree:
        g = g * (a @ stage_weights(c, a))
    return g


def order_residuals(a: np.ndarray, b: np.ndarray, max_order: int, theta: float = 1.0) -> dict:
    """``{tree: b . Phi(tree) - theta^|tree| / gamma(tree)}`` for every tree up to max_order."""
    out = {}
    for n in range(1, max_order + 1):
        for t in trees_of_order(n):
            out[t] = float(b @ stage_weights(t, a)) - theta**n / density(t)
    return out


def achieved_order(a, b, tol, limit=10) -> int:
    p = 0
    while p < limit and all(abs(r) < tol for r in order_residuals(a, b, p + 1).values() if True):
        p += 1
    return p


# --------------------------------------------------------------------------- the methods

EXPLICIT = sorted(
    name for name, cls in solvers.METHODS.items() if getattr(cls, "tableau", None) is not None and not cls.implicit
)
ADAPTIVE = [n for n in EXPLICIT if solvers.METHODS[n].adaptive]
WITH_DENSE = [n for n in EXPLICIT if solvers.METHODS[n].tableau.b_dense is not None]
TOL = 1e-10  # the coefficients are stored to ~16 digits


def extended(tab: ButcherTableau):
    """``(A, c)`` over the propagated stages plus the dense-output-only extra stages."""
    if tab.a_extra is None:
        return tab.a, tab.c
    s, m = tab.stages, tab.c_extra.shape[0]
    a = np.zeros((s + m, s + m))
    a[:s, :s] = tab.a
    a[s:, :] = tab.a_extra
    return a, np.concatenate([tab.c, tab.c_extra])


def test_tree_generator_counts():
    # OEIS A000081: 17 conditions up to order 5, 200 up to order 8.
    counts = [len(trees_of_order(n)) for n in range(1, 9)]
    assert counts == [1, 1, 2, 4, 9, 20, 48, 115]
    assert sum(counts[:5]) == 17
    assert density(((), ())) == 3 and density((((),),)) == 6  # c^2 and a.c conditions


def test_registry_has_the_explicit_core():
    expected = {"euler", "midpoint", "heun2", "heun3", "rk4", "rk4_classic", "bosh3", "dopri5", "tsit5", "dopri8", "adaptive_heun", "fehlberg2"}
    assert expected <= set(EXPLICIT)


@pytest.mark.parametrize("name", EXPLICIT)
def test_basic_properties(name):
    cls = solvers.METHODS[name]
    tab = cls.tableau
    s = tab.stages
    assert tab.a.shape == (s, s) and tab.b.shape == (s,) and tab.c.shape == (s,)
    assert tab.explicit and np.all(np.triu(tab.a) == 0)
    np.testing.assert_allclose(tab.a.sum(axis=1), tab.c, atol=1e-14)
    assert abs(tab.b.sum() - 1.0) < 1e-14
    assert cls.stage_c == tuple(tab.c)
    if cls.adaptive:
        assert tab.b_error is not None, f"{name} is adaptive but has no b_error"
        assert abs(tab.b_error.sum()) < 1e-14
        assert 0 < cls.error_order
    if tab.fsal:
        assert "FSAL" in (cls.__doc__ or ""), f"{name}: FSAL method whose docstring does not say so"


def _f(t, y):  # a generic nonlinear, non-autonomous field: no accidental stage coincidences
    return np.sin(y) * np.cos(t) + 0.1 * y**2 + 0.3 * t


@pytest.mark.parametrize("name", EXPLICIT)
def test_explicit_and_fsal_mean_what_they_say(name):
    """``explicit``: the stages computed one after another (each from earlier ones only) solve
    the full stage equations ``k_i = f(t0 + c_i h, y0 + h sum_j a_ij k_j)``. ``fsal``: the last
    stage is ``f(t1, y1)``, so the next step can reuse it. Both checked numerically on a
    nonlinear field, not by re-deriving the flag from the coefficients."""
    tab = solvers.METHODS[name].tableau
    t0, h, y0 = 0.3, 0.2, np.array([0.7, -1.1])
    k = []
    for i in range(tab.stages):
        k.append(_f(t0 + tab.c[i] * h, y0 + h * sum((tab.a[i, j] * k[j] for j in range(i)), np.zeros(2))))
    K = np.stack(k)  # (stages, 2)
    residual = max(float(np.abs(K[i] - _f(t0 + tab.c[i] * h, y0 + h * tab.a[i] @ K)).max()) for i in range(tab.stages))
    assert tab.explicit and residual <= 1e-15
    y1 = y0 + h * tab.b @ K
    last_is_f1 = float(np.abs(K[-1] - _f(t0 + h, y1)).max()) <= 1e-14
    assert tab.fsal == last_is_f1
    if name in ("bosh3", "dopri5", "tsit5"):  # FSAL in the literature (Bogacki-Shampine, Dormand-Prince, Tsitouras)
        assert tab.fsal
    if name in ("euler", "midpoint", "rk4", "rk4_classic", "heun2", "heun3", "adaptive_heun", "fehlberg2"):
        assert not tab.fsal


def test_fsal_and_explicit_flags_follow_the_coefficients():
    """A non-FSAL tableau made FSAL by its last row, and an implicit one (diagonal entry)."""
    fsal = ButcherTableau(c=[0.0, 1.0, 1.0], a=[[], [1.0], [0.5, 0.5]], b=[0.5, 0.5, 0.0])
    assert fsal.fsal and fsal.explicit
    shifted = ButcherTableau(c=[0.0, 1.0, 1.0], a=[[], [1.0], [0.4, 0.6]], b=[0.5, 0.5, 0.0])
    assert not shifted.fsal  # the last stage is not at y1
    diag = ButcherTableau(c=[0.0, 1.0], a=[[0.0, 0.0], [0.5, 0.5]], b=[0.5, 0.5])
    assert not diag.explicit and not diag.fsal


@pytest.mark.parametrize("name", EXPLICIT)
def test_order_conditions(name):
    cls = solvers.METHODS[name]
    tab = cls.tableau
    res = order_residuals(tab.a, tab.b, cls.order)
    bad = {t: r for t, r in res.items() if abs(r) > TOL}
    assert not bad, f"{name}: order-{cls.order} conditions fail for {len(bad)} trees, e.g. {next(iter(bad.items()))}"
    # ... and the declared order is the true one (catches an understated order).
    nxt = order_residuals(tab.a, tab.b, cls.order + 1)
    assert max(abs(r) for r in nxt.values()) > 1e-6, f"{name} satisfies order {cls.order + 1}: its declared order is too low"


_EMBEDDED = {"dopri8": 5}  # DOP853: error_order=7 sets the controller exponent 1/8; its b_error is the 5th-order estimate


@pytest.mark.parametrize("name", ADAPTIVE)
def test_embedded_order(name):
    cls = solvers.METHODS[name]
    tab = cls.tableau
    p_hat = _EMBEDDED.get(name, cls.error_order)
    b_hat = tab.b - tab.b_error
    bad = [r for r in order_residuals(tab.a, b_hat, p_hat).values() if abs(r) > TOL]
    assert not bad, f"{name}: embedded solution b - b_error is not of order {p_hat}"
    assert achieved_order(tab.a, b_hat, TOL) < cls.order, "the embedded solution must be of lower order"


def test_dopri8_third_order_estimate():
    from solvers._dopri8 import E3

    tab = solvers.METHODS["dopri8"].tableau
    b3 = tab.b - np.asarray(E3)
    assert abs(np.sum(E3)) < 1e-14
    assert all(abs(r) < TOL for r in order_residuals(tab.a, b3, 3).values())


@pytest.mark.parametrize("name", WITH_DENSE)
def test_dense_output_order(name):
    """b(theta) . Phi(tau) = theta^|tau| / gamma(tau) up to order-1 for several theta."""
    cls = solvers.METHODS[name]
    tab = cls.tableau
    a, c = extended(tab)
    if tab.a_extra is not None:
        np.testing.assert_allclose(tab.a_extra.sum(axis=1), tab.c_extra, atol=1e-13)
    q = cls.order - 1 if cls.order > 3 else cls.order
    for theta in (0.0, 0.17, 0.5, 0.83, 1.0):
        powers = theta ** np.arange(1, tab.b_dense.shape[1] + 1)
        b_theta = tab.b_dense @ powers
        if theta == 1.0:
            np.testing.assert_allclose(b_theta[: tab.stages], tab.b, atol=1e-12)
        res = order_residuals(a, b_theta, q, theta=theta)
        bad = {t: r for t, r in res.items() if abs(r) > 1e-9}
        assert not bad, f"{name}: dense output at theta={theta} is not of order {q}: {next(iter(bad.items()))}"


# --------------------------------------------------------------------------- constructor checks

_OK = dict(c=[0.0, 0.5], a=[[], [0.5]], b=[0.0, 1.0])


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (dict(a=[[], [0.4]]), "row 1 of a sums to"),
        (dict(b=[0.1, 1.0]), r"sum\(b\)"),
        (dict(b_error=[0.1, 0.2]), r"sum\(b_error\)"),
        (dict(b=[1.0]), "b must have 2 entries"),
        (dict(b_error=[0.0, 0.0, 0.0]), "b_error must have 2 entries"),
        (dict(a=[[]]), "a must have 2 rows"),
        (dict(a=[[], [0.25, 0.25, 0.0]]), "row 1 has shape"),
        (dict(c=[[0.0, 0.5]]), "c must be 1-D"),
        (dict(c=[0.0, float("nan")]), "c has non-finite"),
        (dict(b_dense=[[1.0, 0.0], [0.0, 0.5]]), "b_dense at theta=1 must reproduce b"),
        (dict(b_dense=[[0.0, 1.0]]), "b_dense must have 2 rows"),
        (dict(c_extra=[0.5]), "a_extra and c_extra go together"),
        (dict(c_extra=[0.5], a_extra=[[0.2, 0.2, 0.0]]), "rows of a_extra must sum to c_extra"),
        (dict(c_extra=[0.5], a_extra=[[0.5, 0.0]]), "a_extra must be 1x3"),
        (dict(c_extra=[0.5], a_extra=[[0.0, 0.0, 0.5]]), "a_extra must be explicit"),
    ],
)
def test_constructor_names_the_broken_property(changes, pattern):
    kwargs = {**_OK, **changes}
    with pytest.raises(ValueError, match=pattern):
        ButcherTableau(**kwargs)


def test_constructor_accepts_and_derives():
    tab = ButcherTableau(**_OK, b_error=[0.5, -0.5])
    assert tab.stages == 2 and tab.explicit and not tab.fsal
    assert tab.a.dtype == np.float64 and tab.a.shape == (2, 2)
    assert ButcherTableau(c=[0.0, 1.0], a=[[], [1.0]], b=[1.0, 0.0]).fsal
    implicit = ButcherTableau(c=[0.5], a=[[0.5]], b=[1.0])
    assert not implicit.explicit


def test_explicit_method_rejects_implicit_tableau():
    implicit = ButcherTableau(c=[0.5], a=[[0.5]], b=[1.0])
    with pytest.raises(ValueError, match="strictly lower-triangular"):

        class _Bad(solvers.AbstractExplicitRK):
            name, order, tableau = "bad_midpoint", 2, implicit
