"""Butcher tableaux that check themselves on construction."""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import numpy as np

__all__ = ["ButcherTableau"]

_TOL = 1e-12


# Rooted trees (Butcher): a tree is the sorted tuple of its children's trees; () is a node.
def _grow(tree: tuple) -> set:
    out = {tuple(sorted(tree + ((),)))}
    for i, child in enumerate(tree):
        for g in _grow(child):
            out.add(tuple(sorted(tree[:i] + (g,) + tree[i + 1 :])))
    return out


@functools.lru_cache(maxsize=None)
def rooted_trees(n: int) -> tuple:
    """All rooted trees with ``n`` nodes (1, 1, 2, 4, 9, 20, 48, 115 for n = 1..8)."""
    if n == 1:
        return ((),)
    out = set()
    for t in rooted_trees(n - 1):
        out |= _grow(t)
    return tuple(sorted(out))


def _density(tree: tuple) -> int:
    g = 1 + sum(_nodes(c) for c in tree)
    for c in tree:
        g *= _density(c)
    return g


def _nodes(tree: tuple) -> int:
    return 1 + sum(_nodes(c) for c in tree)


def _weights(tree: tuple, a: np.ndarray) -> np.ndarray:
    g = np.ones(a.shape[0])
    for c in tree:
        g = g * (a @ _weights(c, a))
    return g


def _as_array(name: str, value, ndim: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"ButcherTableau.{name} must be {ndim}-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"ButcherTableau.{name} has non-finite entries")
    return arr


def _lower_rows(a: Sequence[Sequence[float]], s: int) -> np.ndarray:
    """Accept a full ``s x s`` matrix or ragged lower-triangular rows."""
    if len(a) != s:
        raise ValueError(f"ButcherTableau.a must have {s} rows (one per stage), got {len(a)}")
    full = np.zeros((s, s))
    for i, row in enumerate(a):
        row = np.asarray(row, dtype=np.float64)
        if row.ndim != 1 or row.shape[0] > s:
            raise ValueError(f"ButcherTableau.a row {i} has shape {row.shape}; at most {s} entries")
        full[i, : row.shape[0]] = row
    return full


@dataclasses.dataclass(frozen=True, eq=False)
class ButcherTableau:
    """The coefficients of a Runge–Kutta method, in float64.

    ``y1 = y0 + h * sum_i b[i] k[i]`` with ``k[i] = f(t0 + c[i] h, y0 + h sum_j a[i][j] k[j])``.

    Parameters
    ----------
    c : sequence of float, shape ``(s,)``
        Stage times as fractions of the step.
    a : sequence of rows
        The stage matrix: a full ``s x s`` matrix or ragged lower-triangular rows.
    b : sequence of float, shape ``(s,)``
        Weights of the propagated solution; they sum to one.
    b_error : sequence of float, optional
        Weights of the embedded error estimate ``err = h sum_i b_error[i] k[i]`` (the
        difference of the two solutions, so they sum to zero).
    b_dense : array, shape ``(s_dense, p)``, optional
        Dense output ``y(t0 + theta h) = y0 + h sum_i k[i] sum_q b_dense[i, q] theta^(q+1)``.
        ``s_dense`` may exceed ``s`` when the interpolant needs extra stages
        (``a_extra``/``c_extra``).
    a_extra, c_extra : optional
        Rows and times of extra stages used only by the dense output.

    Notes
    -----
    Derived attributes: ``stages``, ``explicit`` (``a`` strictly lower triangular), ``fsal``
    (the last stage is evaluated at the propagated solution, so it is the next step's
    first stage).

    Raises
    ------
    ValueError
        Naming the broken property: shapes, row sums of ``a`` not equal to ``c``,
        ``sum(b) != 1``, ``sum(b_error) != 0``, dense output that does not reproduce ``b``
        at ``theta = 1``.
    """

    c: np.ndarray
    a: np.ndarray
    b: np.ndarray
    b_error: Optional[np.ndarray] = None
    b_dense: Optional[np.ndarray] = None
    a_extra: Optional[np.ndarray] = None
    c_extra: Optional[np.ndarray] = None

    def __post_init__(self):
        c = _as_array("c", self.c, 1)
        s = c.shape[0]
        if s < 1:
            raise ValueError("ButcherTableau needs at least one stage")
        a = _lower_rows(self.a, s)
        if a.shape != (s, s):
            raise ValueError(f"ButcherTableau.a must be {s}x{s}, got {a.shape}")
        b = _as_array("b", self.b, 1)
        if b.shape != (s,):
            raise ValueError(f"ButcherTableau.b must have {s} entries, got {b.shape[0]}")
        rows = a.sum(axis=1)
        bad = np.nonzero(np.abs(rows - c) > _TOL * max(1.0, np.abs(c).max()) * 10)[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"ButcherTableau: row {i} of a sums to {float(rows[i]):.17g} but c[{i}] = {float(c[i]):.17g}; row sums of a must equal c")
        if abs(b.sum() - 1.0) > 1e-12:
            raise ValueError(f"ButcherTableau: sum(b) = {float(b.sum()):.17g}, must be 1")
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        if self.b_error is not None:
            e = _as_array("b_error", self.b_error, 1)
            if e.shape != (s,):
                raise ValueError(f"ButcherTableau.b_error must have {s} entries, got {e.shape[0]}")
            if abs(e.sum()) > 1e-12:
                raise ValueError(f"ButcherTableau: sum(b_error) = {float(e.sum()):.17g}, must be 0")
            object.__setattr__(self, "b_error", e)
        n_extra = 0
        if self.a_extra is not None or self.c_extra is not None:
            if self.a_extra is None or self.c_extra is None:
                raise ValueError("ButcherTableau: a_extra and c_extra go together")
            ce = _as_array("c_extra", self.c_extra, 1)
            ae = _as_array("a_extra", self.a_extra, 2)
            n_extra = ce.shape[0]
            if ae.shape != (n_extra, s + n_extra):
                raise ValueError(f"ButcherTableau.a_extra must be {n_extra}x{s + n_extra}, got {ae.shape}")
            if np.any(np.triu(ae[:, s:]) != 0):
                raise ValueError("ButcherTableau.a_extra must be explicit (each extra stage uses earlier stages only)")
            rs = ae.sum(axis=1)
            if np.any(np.abs(rs - ce) > 1e-10):
                raise ValueError("ButcherTableau: rows of a_extra must sum to c_extra")
            object.__setattr__(self, "a_extra", ae)
            object.__setattr__(self, "c_extra", ce)
        if self.b_dense is not None:
            d = _as_array("b_dense", self.b_dense, 2)
            if d.shape[0] != s + n_extra:
                raise ValueError(f"ButcherTableau.b_dense must have {s + n_extra} rows, got {d.shape[0]}")
            at_one = d.sum(axis=1)
            full_b = np.concatenate([b, np.zeros(n_extra)])
            if np.max(np.abs(at_one - full_b)) > 1e-10:
                raise ValueError("ButcherTableau: b_dense at theta=1 must reproduce b (dense output must be continuous)")
            object.__setattr__(self, "b_dense", d)

    def order_residual(self, n: int, weights=None) -> float:
        """Largest ``|b . Phi(tau) - 1/gamma(tau)|`` over the rooted trees with ``n`` nodes
        (``weights`` in place of ``b``, e.g. an embedded solution)."""
        w = self.b if weights is None else np.asarray(weights, dtype=np.float64)
        return max(abs(float(w @ _weights(t, self.a)) - 1.0 / _density(t)) for t in rooted_trees(n))

    def order(self, limit: int = 8, tol: float = 1e-10, weights=None) -> int:
        """The order the coefficients achieve: the largest ``p <= limit`` whose order
        conditions (every rooted tree with at most ``p`` nodes) hold to ``tol``."""
        p = 0
        while p < limit and self.order_residual(p + 1, weights) < tol:
            p += 1
        return p

    def check_order(self, order: int, owner: str = "ButcherTableau", tol: float = 1e-10) -> None:
        """Raise ``ValueError`` naming the first tree order whose conditions fail, if the
        coefficients do not have at least ``order``."""
        for n in range(1, order + 1):
            r = self.order_residual(n)
            if r >= tol:
                raise ValueError(f"{owner}: the order-{n} conditions fail (residual {r:.3g}), so the tableau is not of order {order}")

    @property
    def stages(self) -> int:
        return int(self.c.shape[0])

    @property
    def explicit(self) -> bool:
        return bool(np.all(np.triu(self.a) == 0))

    @property
    def fsal(self) -> bool:
        return bool(
            self.explicit
            and self.stages > 1
            and self.c[-1] == 1.0
            and self.b[-1] == 0.0
            and np.array_equal(self.a[-1, :-1], self.b[:-1])
        )

    def rows(self):
        """Nonzero stage coefficients as ``[(j, a_ij), ...]`` per stage (Python floats)."""
        return [[(j, float(v)) for j, v in enumerate(self.a[i, :i]) if v != 0.0] for i in range(self.stages)]

    @staticmethod
    def nonzero(weights) -> list:
        return [(j, float(v)) for j, v in enumerate(weights) if v != 0.0]
