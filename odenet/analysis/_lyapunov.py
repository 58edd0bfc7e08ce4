"""Lyapunov exponents by Benettin's QR method, for flows and for maps (RNNs).

A flow ``x' = f(t, x)`` is integrated together with ``k`` tangent vectors ``V' = J_f(x) V``
by :func:`solvers.solve` (one state tensor ``(1 + k, n)``: row 0 is ``x``); every ``window``
time units the tangent basis is re-orthonormalised by QR and ``log |R_ii|`` accumulated, so
``lambda_i = (1/T) sum log |R_ii|``. A map ``h -> F(h)`` (a tanh RNN step) is handled the
same way with the map's JVP in place of the flow.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

import solvers

__all__ = ["Lorenz", "lyapunov_exponents", "map_lyapunov_exponent", "tanh_rnn_mean_field_lambda1",
           "log_growth_slope"]


class Lorenz(nn.Module):
    """The Lorenz system ``x' = s(y - x), y' = x(r - z) - y, z' = xy - b z`` on ``[..., 3]``.

    It has an exact Jacobian-vector product :meth:`jvp`, which :func:`lyapunov_exponents`
    uses instead of autograd (the trace ``-(s + 1 + b)`` is the sum of the exponents).
    """

    def __init__(self, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0):
        super().__init__()
        self.sigma, self.rho, self.beta = float(sigma), float(rho), float(beta)
        self._jac_parts = {}  # (dtype, device) -> (A, C): J(x) = A + (x @ C).view(3, 3)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        a, b, c = x[..., 0], x[..., 1], x[..., 2]
        return torch.stack([self.sigma * (b - a), a * (self.rho - c) - b, a * b - self.beta * c], -1)

    def jvp(self, t, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J(x) v`` for tangent rows ``v`` of shape ``(k, 3)`` at one point ``x`` of shape ``(3,)``."""
        # J(x) = A + sum_i x_i C_i (the field is quadratic): four tensor ops instead of a dozen
        # scalar ones, which is most of the time of F1's 10^5-step Benettin run
        key = (x.dtype, x.device)
        if key not in self._jac_parts:
            s, r, b = self.sigma, self.rho, self.beta
            a_mat = torch.tensor([[-s, s, 0.0], [r, -1.0, 0.0], [0.0, 0.0, -b]], dtype=x.dtype, device=x.device)
            c = torch.zeros(3, 3, 3, dtype=x.dtype, device=x.device)
            c[0, 1, 2], c[0, 2, 1] = -1.0, 1.0  # d/dx of -x z (row y') wrt z, of x y (row z') wrt y
            c[1, 2, 0] = 1.0  # y in row z', column x
            c[2, 1, 0] = -1.0  # z in row y', column x
            self._jac_parts[key] = (a_mat, c.reshape(3, 9))
        a_mat, c = self._jac_parts[key]
        return v @ (a_mat + (x @ c).view(3, 3)).T

    @property
    def trace(self) -> float:
        """``tr J = -(sigma + 1 + beta)``, constant in ``x``: the sum of all exponents."""
        return -(self.sigma + 1.0 + self.beta)


def _default_jvp(field: Callable) -> Callable:
    def jvp(t, x, v):  # (n,), (k, n) -> (k, n)
        return torch.func.vmap(lambda q: torch.func.jvp(lambda y: field(t, y), (x,), (q,))[1])(v)

    return jvp


def lyapunov_exponents(field: Callable, y0: torch.Tensor, *, t_end: float, dt: float = 0.01,
                       method: str = "rk4", window: float = 1.0, transient: float = 0.0,
                       n_exponents: Optional[int] = None, jvp: Optional[Callable] = None,
                       progress: Optional[Callable[[float], None]] = None) -> dict:
    """Lyapunov exponents of ``x' = field(t, x)`` by Benettin's QR method.

    Parameters
    ----------
    field : callable
        ``field(t, x)`` on a 1-D state ``x`` of size ``n``.
    y0 : Tensor
        Initial state, shape ``(n,)`` (float64 recommended).
    t_end : float
        Averaging time ``T`` (after the transient).
    dt : float
        Fixed step of ``method``.
    method : str
        A fixed-step method of :data:`solvers.METHODS` (``"rk4"``, ``"euler"``, ...).
    window : float
        Time between QR re-orthonormalisations.
    transient : float
        Time integrated first and discarded (the state settles on the attractor).
    n_exponents : int, optional
        Number of exponents (tangent vectors); default ``n``.
    jvp : callable, optional
        ``jvp(t, x, V) -> J(x) V`` for tangent rows ``V`` of shape ``(k, n)``; default
        ``field.jvp`` if it exists, else ``torch.func`` forward-mode AD.
    progress : callable, optional
        Called with the time advanced after every window (for a progress bar).

    Returns
    -------
    dict
        ``exponents`` (list, descending), ``sum``, ``window_lambda1`` (the estimate of
        ``lambda_1`` from each window, for its spread) and ``state`` (the final ``x``).
    """
    if not (t_end > 0 and dt > 0 and window >= dt):
        raise ValueError(f"need t_end > 0, dt > 0 and window >= dt; got t_end={t_end}, dt={dt}, window={window}")
    x = y0.detach().clone()
    n = x.shape[0]
    k = n if n_exponents is None else int(n_exponents)
    if jvp is None:
        jvp = getattr(field, "jvp", None) or _default_jvp(field)

    def aug(t, s):  # s: (1 + k, n); row 0 the state, rows 1.. the tangent vectors
        xs, vs = s[0], s[1:]
        return torch.cat([field(t, xs)[None], jvp(t, xs, vs)])

    opts = dict(step_size=dt)
    span = torch.tensor([0.0, window], dtype=torch.float64)
    with torch.no_grad():
        if transient > 0:
            x = solvers.solve(field, x, torch.tensor([0.0, transient], dtype=torch.float64), method=method,
                              options=opts).ys[-1]
        q = torch.linalg.qr(torch.randn(n, k, dtype=x.dtype, generator=torch.Generator().manual_seed(0)))[0]
        s = torch.cat([x[None], q.T])
        logs = []
        n_win = max(1, round(t_end / window))
        for _ in range(n_win):
            s = solvers.solve(aug, s, span, method=method, options=opts).ys[-1]
            q, r = torch.linalg.qr(s[1:].T)  # (n, k), (k, k)
            d = torch.diagonal(r)
            logs.append(torch.log(d.abs()).numpy())
            s = torch.cat([s[:1], (q * torch.sign(d)).T])
            if progress is not None:
                progress(window)
    logs = np.stack(logs)  # (windows, k)
    total = n_win * window
    lam = logs.sum(0) / total
    return {"exponents": [float(v) for v in lam], "sum": float(lam.sum()),
            "window_lambda1": [float(v) for v in logs[:, 0] / window], "state": s[0].clone(), "time": total}


def map_lyapunov_exponent(step: Callable[[torch.Tensor], torch.Tensor], h0: torch.Tensor, *, n_steps: int,
                          transient: int = 0, generator: Optional[torch.Generator] = None):
    """Largest Lyapunov exponent of the map ``h -> step(h)`` (per step), by renormalised JVPs.

    Parameters
    ----------
    step : callable
        One step of the map on a 1-D state, or on a batch ``(B, n)`` of independent rows.
    h0 : Tensor
        Initial state, ``(n,)`` or ``(B, n)``.
    n_steps : int
        Steps averaged over (after ``transient`` steps discarded).

    Returns
    -------
    float or numpy.ndarray
        The exponent (one per row for a batched state).
    """
    h = h0.detach().clone()
    with torch.no_grad():
        for _ in range(transient):
            h = step(h)
    v = torch.randn(h.shape, dtype=h.dtype, generator=generator)
    v = v / v.norm(dim=-1, keepdim=True)
    acc = torch.zeros(h.shape[:-1], dtype=h.dtype)
    for _ in range(n_steps):
        h, v = torch.func.jvp(step, (h,), (v,))
        nv = v.norm(dim=-1, keepdim=True)
        acc += torch.log(nv[..., 0])
        v = v / nv
    out = (acc / n_steps).numpy()
    return float(out) if h0.dim() == 1 else out


def log_growth_slope(times, values) -> float:
    """Least-squares slope of ``values`` (e.g. ``log |dh_T/dh_0|``) against ``times``."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    return float(np.polyfit(t, v, 1)[0])


def tanh_rnn_mean_field_lambda1(g: float, *, n_quad: int = 200, iters: int = 2000) -> float:
    """Mean-field ``lambda_1`` of ``h <- tanh(g W h)`` with ``W`` orthogonal (or ``N(0, 1/n)``).

    ``q = g^2 E[tanh^2(sqrt(q) z)]`` (fixed point, ``z ~ N(0, 1)``), then
    ``lambda_1 = 1/2 log(g^2 E[sech^4(sqrt(q) z)])``; ``log g`` when ``q = 0`` (``g <= 1``).
    Expectations by Gauss–Hermite quadrature of ``n_quad`` nodes.
    """
    if g <= 1.0:  # the origin is the attracting fixed point: q = 0
        return math.log(g)
    z, w = np.polynomial.hermite_e.hermegauss(n_quad)
    w = w / w.sum()
    q = 1.0
    for _ in range(iters):
        q_new = g * g * float(w @ np.tanh(math.sqrt(q) * z) ** 2)
        if abs(q_new - q) < 1e-15:
            q = q_new
            break
        q = q_new
    if q < 1e-12:
        return math.log(g)
    sech4 = 1.0 / np.cosh(math.sqrt(q) * z) ** 4
    return 0.5 * math.log(g * g * float(w @ sech4))
