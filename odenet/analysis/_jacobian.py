"""Jacobians of maps through depth: singular values, gradient gains, Lipschitz ratios.

These take any map ``fn: x -> y`` on a 1-D float64 state (an :class:`odenet.ODEBlock` applied
to one sample, a plain chain of layers, one solver step) and measure how it stretches
perturbations and gradients; they are what the A, C and H claims are measured with.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["jacobian", "singular_values", "gradient_gain", "lipschitz_ratio", "power_iteration_norm"]


def _check_state(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 1:
        raise ValueError(f"`x` must be a 1-D tensor (one sample's state), got {getattr(x, 'shape', type(x))}")
    return x


def jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The Jacobian ``d fn(x) / dx`` (shape ``(m, n)``) by reverse-mode autograd.

    Parameters
    ----------
    fn : callable
        Maps a 1-D tensor of size ``n`` to a 1-D tensor of size ``m``.
    x : Tensor
        The point, shape ``(n,)``.
    """
    x = _check_state(x).detach()
    return torch.autograd.functional.jacobian(fn, x, vectorize=False)


def singular_values(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """All singular values of the Jacobian of ``fn`` at ``x``, descending."""
    return torch.linalg.svdvals(jacobian(fn, x))


def gradient_gain(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  cotangent: Optional[torch.Tensor] = None) -> float:
    """``|dl/dx_0| / |dl/dx_L|`` for ``l = <v, fn(x_0)>``: how much a gradient grows backwards.

    Parameters
    ----------
    fn : callable
        The map ``x_0 -> x_L`` (e.g. a block applied to one sample).
    x : Tensor
        The input ``x_0``, 1-D.
    cotangent : Tensor, optional
        ``v = dl/dx_L``; default all ones.
    """
    x0 = _check_state(x).detach().clone().requires_grad_(True)
    y = fn(x0)
    v = torch.ones_like(y) if cotangent is None else cotangent
    (g,) = torch.autograd.grad(y, x0, v)
    return float(g.norm() / v.norm())


def power_iteration_norm(matvec: Callable[[torch.Tensor], torch.Tensor],
                         rmatvec: Callable[[torch.Tensor], torch.Tensor], n: int, *, iters: int = 20,
                         generator: Optional[torch.Generator] = None, dtype=torch.float64) -> float:
    """``||J||_2`` from ``iters`` power iterations on ``J^T J`` (matrix-free).

    Parameters
    ----------
    matvec, rmatvec : callable
        ``v -> J v`` and ``u -> J^T u``.
    n : int
        Size of ``v``.
    """
    v = torch.randn(n, generator=generator, dtype=dtype)
    v = v / v.norm()
    s = 0.0
    for _ in range(iters):
        w = rmatvec(matvec(v))
        s = float(w.norm()) ** 0.5
        v = w / w.norm()
    return s


def lipschitz_ratio(fn: Callable[[torch.Tensor], torch.Tensor], xs: torch.Tensor, *, radius: float = 1e-4,
                    power_iters: int = 20, generator: Optional[torch.Generator] = None) -> dict:
    """Estimate the Lipschitz constant of ``fn`` (a batched map ``(B, n) -> (B, m)``).

    Two estimates: the largest ratio ``|fn(x + d) - fn(x)| / |d|`` over the close pairs
    ``(x, x + d)``, ``|d| = radius`` in a random direction, one pair per row of ``xs``; and
    the largest ``||J(x)||_2`` from ``power_iters`` power iterations on ``J^T J`` at the
    first few rows of ``xs`` (``J`` by reverse-mode autograd, so maps whose gradient is an
    implicit-function-theorem backward, such as implicit blocks, are covered too).

    Returns
    -------
    dict
        ``{"pairs": max ratio over pairs, "power": max power-iteration norm}``.
    """
    if xs.dim() != 2:
        raise ValueError(f"`xs` must be a (B, n) batch of points, got shape {tuple(xs.shape)}")
    d = torch.randn(xs.shape, generator=generator, dtype=xs.dtype)
    d = radius * d / d.norm(dim=1, keepdim=True)
    with torch.no_grad():
        ratios = (fn(xs + d) - fn(xs)).norm(dim=1) / d.norm(dim=1)
    best = 0.0
    for x in xs[: min(8, xs.shape[0])]:
        jac = jacobian(lambda v: fn(v[None])[0], x)  # (m, n)
        best = max(best, power_iteration_norm(lambda v, j=jac: j @ v, lambda u, j=jac: j.T @ u, xs.shape[1],
                                              iters=power_iters, generator=generator, dtype=xs.dtype))
    return {"pairs": float(ratios.max()), "power": best}
