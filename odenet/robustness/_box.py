"""The l-infinity threat model: the eps-ball around an input intersected with the input range.

Attacks work on the normalised inputs a model sees, ``x = (x_raw - mean) / std``. A raw
radius ``eps`` (a fraction of the raw range [0, 1] for the digits) is the normalised
radius ``eps / std``, and the raw range maps to ``data.normalised_range()``; since the map
is affine and the same for every pixel, projecting in normalised space *is* attacking in
raw space and clipping to the raw range. The box always contains ``x`` itself (so
``eps = 0`` leaves an input exactly unchanged, even one that rounding put a hair outside
the range).
"""

from __future__ import annotations

import math

import torch

__all__ = ["check_epsilon", "linf_box"]


def check_epsilon(epsilon: float, name: str = "epsilon", *, upper: float | None = None) -> float:
    """``epsilon`` as a float, or ValueError/TypeError naming ``name`` and the valid range."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"{name} must be a number, got {epsilon!r} ({type(epsilon).__name__})")
    e = float(epsilon)
    if not math.isfinite(e) or e < 0 or (upper is not None and e > upper):
        rng = f"[0, {upper:g}]" if upper is not None else ">= 0 and finite"
        raise ValueError(f"{name} must lie in {rng}, got {epsilon!r}"
                         + (" (a fraction of the raw input range)" if upper is not None else ""))
    return e


def linf_box(x: torch.Tensor, epsilon: float,
             clamp: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element bounds ``(lower, upper)`` of the allowed inputs around ``x``.

    ``lower = min(max(x - eps, lo), x)``, ``upper = max(min(x + eps, hi), x)``.

    Parameters
    ----------
    x : torch.Tensor
        Clean inputs (model units).
    epsilon : float
        l-infinity radius in model units, >= 0.
    clamp : (float, float), optional
        The valid input range in model units.
    """
    x = x.detach()
    lower, upper = x - epsilon, x + epsilon
    if clamp is not None:
        lower, upper = lower.clamp(min=clamp[0]), upper.clamp(max=clamp[1])
    return torch.minimum(lower, x), torch.maximum(upper, x)
