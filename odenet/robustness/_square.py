"""The Square attack (Andriushchenko et al., ECCV 2020), l-infinity: a gradient-free
random search with a fixed query budget.

It never looks at a gradient, so a solver that masks gradients (adaptive step control,
root-finder tolerances, an adjoint that rebuilds the state inaccurately) cannot hide a
vulnerable model from it. Starting from vertical stripes of +-eps, every iteration
redraws the perturbation on one random square window (side shrinking on the paper's
schedule) to +-eps per channel and keeps the change if the margin loss
``logit_y - max_{k != y} logit_k`` decreases. A point counts as broken once its margin
is negative; broken points are not queried again.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._box import check_epsilon, linf_box

__all__ = ["square_attack", "margin"]

# fraction of the window area is halved at these points of a 10000-query run
_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``logit_y - max_{k != y} logit_k`` per sample: negative iff misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return true - other.max(1).values


def _p_at(p_init: float, it: int, n_iters: int) -> float:
    it = int(it / max(n_iters, 1) * 10000)
    return p_init / 2 ** sum(it > t for t in _SCHEDULE)


@torch.no_grad()
def square_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, *,
                  queries: int = 200, p_init: float = 0.3, clamp: tuple[float, float] | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """l-infinity Square attack with a budget of ``queries`` model evaluations per input.

    Parameters
    ----------
    model : nn.Module
        The classifier (queried for logits only, under its own solver).
    x, y : torch.Tensor
        Images ``[B, C, H, W]`` (model units) and integer labels.
    epsilon : float
        Radius in model units, >= 0 (``0`` returns ``x``).
    queries : int
        Evaluations per input, the initial one included (>= 1).
    p_init : float
        Initial fraction of the image area redrawn per iteration, in (0, 1].
    clamp : (float, float), optional
        Valid input range.
    generator : torch.Generator, optional
        Source of randomness (CPU; draws are moved to ``x``'s device).

    Returns
    -------
    torch.Tensor
        Adversarial images inside ``linf_box(x, epsilon, clamp)``.
    """
    epsilon = check_epsilon(epsilon)
    if not isinstance(queries, int) or isinstance(queries, bool) or queries < 1:
        raise ValueError(f"queries must be a positive integer, got {queries!r}")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}")
    if x.dim() != 4:
        raise ValueError(f"square_attack needs images [B, C, H, W], got shape {tuple(x.shape)}")
    x = x.detach()
    if epsilon == 0:
        return x.clone()
    lower, upper = linf_box(x, epsilon, clamp)
    return square_rows(model, x, y, lower, upper, [(0, len(x), epsilon, generator)], queries=queries, p_init=p_init)


@torch.no_grad()
def square_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                groups, *, queries: int, p_init: float = 0.3) -> torch.Tensor:
    """The Square attack on groups of rows, each with its own radius and random stream.

    ``groups`` lists ``(start, stop, epsilon, generator)`` for consecutive rows of ``x``
    (model units; ``lower``/``upper`` the rows' boxes). Every group draws its stripes, windows
    and signs from its own generator exactly as :func:`square_attack` on those rows alone
    would, and stops drawing once all its points are broken; the model is queried once per
    iteration on the unbroken points of every group together (one batch instead of one per
    epsilon). For a model whose rows do not interact the result equals separate calls.
    """
    b, c, h, w = x.shape
    dev, dt = x.device, x.dtype

    def rand_sign(gen, *shape):
        return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(dev, dt)

    x_adv = torch.cat([x[a:z] + e * rand_sign(g, z - a, c, 1, w) for a, z, e, g in groups])  # vertical stripes
    x_adv = torch.minimum(torch.maximum(x_adv, lower), upper)
    best = margin(model(x_adv), y)
    for it in range(queries - 1):
        p = _p_at(p_init, it, queries - 1)
        s = min(max(int(round(math.sqrt(p * h * w))), 1), max(min(h, w) - 1, 1))
        rows, cands = [], []
        for a, z, e, g in groups:
            idx = (best[a:z] >= 0).nonzero().flatten() + a
            if len(idx) == 0:
                continue
            r = int(torch.randint(0, h - s + 1, (1,), generator=g))
            q = int(torch.randint(0, w - s + 1, (1,), generator=g))
            cand = x_adv[idx].clone()
            cand[:, :, r:r + s, q:q + s] = x[idx, :, r:r + s, q:q + s] + e * rand_sign(g, len(idx), c, 1, 1)
            rows.append(idx)
            cands.append(cand)
        if not rows:
            break
        idx = torch.cat(rows)
        cand = torch.minimum(torch.maximum(torch.cat(cands), lower[idx]), upper[idx])
        m = margin(model(cand), y[idx])
        better = m < best[idx]
        x_adv[idx[better]] = cand[better]
        best[idx[better]] = m[better]
    return x_adv.detach()
