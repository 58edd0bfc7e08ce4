"""Cubic interpolation of irregular, padded series: a continuous path through the observations.

Two interpolants, both batched over series with their own knots ``t`` of shape ``(B, T)``
and values ``x`` of shape ``(B, T, C)`` (a series of length ``n_b`` uses its first ``n_b``
knots; padding after them is ignored, the path stays constant there):

- :func:`natural_cubic_spline`: the C2 cubic spline with zero second derivative at both
  ends (``scipy.interpolate.CubicSpline(bc_type="natural")``), from one batched
  tridiagonal solve for the knot second derivatives;
- :func:`hermite_cubic_backward`: Hermite cubics whose derivative at each knot is the
  backward difference (Kidger et al.'s ``hermite_cubic_coefficients_with_backward_differences``):
  C1 and *causal*, the path on ``[t_k, t_k+1]`` depends only on observations up to ``t_k+1``.

Both reproduce linear data exactly and pass through every knot. Both return a
:class:`CubicPath`: per interval ``k`` the coefficients of
``X(t) = a_k + b_k tau + c_k tau^2 + d_k tau^3`` with ``tau = t - t_k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["CubicPath", "natural_cubic_spline", "hermite_cubic_backward", "INTERPOLATIONS"]


@dataclass
class CubicPath:
    """A piecewise cubic path per series.

    Attributes
    ----------
    knots : Tensor (B, T)
    lengths : Tensor (B,)
    a, b, c, d : Tensor (B, max(T - 1, 1), C)
        Coefficients per interval (zero ``b, c, d`` on padding intervals).
    """

    knots: torch.Tensor
    lengths: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    d: torch.Tensor

    def _locate(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval index ``(B, Q)`` and ``tau`` for query times ``t`` of shape ``(B, Q)``."""
        last = (self.lengths - 2).clamp_min(0)[:, None]  # (B, 1): last real interval
        k = torch.searchsorted(self.knots.contiguous(), t.to(self.knots.dtype).contiguous(), right=True) - 1
        k = torch.minimum(k.clamp_min(0), last)
        tau = (t.to(self.knots.dtype) - self.knots.gather(1, k)).to(self.a.dtype)
        return k, tau

    def _coef(self, k: torch.Tensor):
        idx = k[..., None].expand(*k.shape, self.a.shape[-1])
        return [v.gather(1, idx) for v in (self.a, self.b, self.c, self.d)]

    def evaluate(self, t: torch.Tensor) -> torch.Tensor:
        """``X(t)``: ``t`` of shape ``(B,)`` gives ``(B, C)``, ``(B, Q)`` gives ``(B, Q, C)``."""
        squeeze = t.ndim == 1
        k, tau = self._locate(t[:, None] if squeeze else t)
        a, b, c, d = self._coef(k)
        tau = tau[..., None]
        out = a + tau * (b + tau * (c + tau * d))
        return out[:, 0] if squeeze else out

    def derivative(self, t: torch.Tensor) -> torch.Tensor:
        """``dX/dt`` at ``t`` (shapes as in :meth:`evaluate`)."""
        squeeze = t.ndim == 1
        k, tau = self._locate(t[:, None] if squeeze else t)
        _, b, c, d = self._coef(k)
        tau = tau[..., None]
        out = b + tau * (2 * c + 3 * d * tau)
        return out[:, 0] if squeeze else out

    def derivative_on(self, k: int, tau: torch.Tensor) -> torch.Tensor:
        """``dX/dt`` on interval ``k`` (the same for every series) at offsets ``tau`` (B,): (B, C)."""
        k = min(max(int(k), 0), self.b.shape[1] - 1)
        tau = tau.to(self.b.dtype)[:, None]
        return self.b[:, k] + tau * (2 * self.c[:, k] + 3 * self.d[:, k] * tau)


def _prepare(t: torch.Tensor, x: torch.Tensor, lengths: Optional[torch.Tensor]):
    if x.ndim != 3 or t.shape != x.shape[:2]:
        raise ValueError(f"need t (B, T) and x (B, T, C), got {tuple(t.shape)} and {tuple(x.shape)}")
    B, T, _ = x.shape
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
    lengths = lengths.to(x.device)
    h = (t[:, 1:] - t[:, :-1]).to(x.dtype)  # (B, T-1)
    real = torch.arange(T - 1, device=x.device)[None, :] < (lengths[:, None] - 1)  # (B, T-1) real intervals
    if bool((real & ~(h > 0)).any()):
        raise ValueError("interpolation needs strictly increasing times within each series "
                         "(found a repeated or decreasing time)")
    hs = torch.where(real, h, torch.ones_like(h))
    slope = torch.where(real[..., None], (x[:, 1:] - x[:, :-1]) / hs[..., None], torch.zeros_like(x[:, 1:]))
    return lengths, real, hs, slope


def _path(t, x, lengths, b, c, d) -> CubicPath:
    a = x[:, :-1]
    if x.shape[1] == 1:  # one knot: a constant path on a single dummy interval
        a, b, c, d = x, torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
    return CubicPath(t, lengths, a, b, c, d)


def natural_cubic_spline(t: torch.Tensor, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> CubicPath:
    """The natural cubic spline through ``(t[b, k], x[b, k])`` for ``k < lengths[b]``.

    Parameters
    ----------
    t : Tensor (B, T)
        Knots, strictly increasing within each series' real length.
    x : Tensor (B, T, C)
        Values (fill missing values before, e.g. by carrying the last one forward).
    lengths : Tensor (B,), optional
        Real lengths (default: all ``T``).
    """
    B, T, C = x.shape
    if T == 1:
        return _path(t, x, lengths if lengths is not None else torch.ones(B, dtype=torch.long), None, None, None)
    lengths, real, hs, slope = _prepare(t, x, lengths)
    # second derivatives M: interior rows h_{i-1} M_{i-1} + 2 (h_{i-1} + h_i) M_i + h_i M_{i+1}
    # = 6 (slope_i - slope_{i-1}); end and padding rows M_i = 0
    i = torch.arange(T, device=x.device)[None, :]
    interior = (i >= 1) & (i < lengths[:, None] - 1)  # (B, T)
    hl = torch.cat([hs[:, :1], hs], 1)  # h_{i-1} at row i, (B, T)
    hr = torch.cat([hs, hs[:, :1]], 1)  # h_i at row i
    diag = torch.where(interior, 2 * (hl + hr), torch.ones_like(hl))
    lower = torch.where(interior[:, 1:], hl[:, 1:], torch.zeros_like(hl[:, 1:]))  # A[i, i-1], i = 1..T-1
    upper = torch.where(interior[:, :-1], hr[:, :-1], torch.zeros_like(hr[:, :-1]))  # A[i, i+1], i = 0..T-2
    A = torch.diag_embed(diag) + torch.diag_embed(lower, -1) + torch.diag_embed(upper, 1)  # (B, T, T)
    rhs = torch.zeros_like(x)
    rhs[:, 1:-1] = 6 * (slope[:, 1:] - slope[:, :-1])
    rhs = rhs * interior[..., None]
    M = torch.linalg.solve(A, rhs)  # (B, T, C)
    h = hs[..., None]
    m0, m1 = M[:, :-1], M[:, 1:]
    b = slope - h * (2 * m0 + m1) / 6
    c = m0 / 2
    d = (m1 - m0) / (6 * h)
    keep = real[..., None]
    return _path(t, x, lengths, b * keep, c * keep, d * keep)


def hermite_cubic_backward(t: torch.Tensor, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> CubicPath:
    """Hermite cubics with backward-difference knot derivatives (C1, causal).

    On interval ``k`` the path starts with slope ``(x_k - x_{k-1}) / h_{k-1}`` (the first
    interval with its own slope) and ends with slope ``(x_{k+1} - x_k) / h_k``.
    Arguments as in :func:`natural_cubic_spline`.
    """
    B, T, C = x.shape
    if T == 1:
        return _path(t, x, lengths if lengths is not None else torch.ones(B, dtype=torch.long), None, None, None)
    lengths, real, hs, slope = _prepare(t, x, lengths)
    m0 = torch.cat([slope[:, :1], slope[:, :-1]], 1)  # start derivative of interval k
    h = hs[..., None]
    b = m0
    c = 2 * (slope - m0) / h
    d = (m0 - slope) / h ** 2
    keep = real[..., None]
    return _path(t, x, lengths, b * keep, c * keep, d * keep)


#: Interpolations accepted by :class:`odenet.NeuralCDE` (``interpolation=``).
INTERPOLATIONS = {"natural_cubic": natural_cubic_spline, "hermite_backward": hermite_cubic_backward}
