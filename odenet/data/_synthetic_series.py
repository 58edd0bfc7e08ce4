"""Synthetic irregular series, generated deterministically from a seed (no downloads).

- :func:`periodic_sines`: Rubanova et al. 2019's periodic sines: ``n`` series of
  ``x(t) = sin(2 pi f t)`` (plus small noise) at 100 irregular times on ``[0, 5]`` of their
  own, ``f ~ U[0.4, 0.8]``; half of the points are kept as observations. ``task`` is
  ``"interpolation"`` (observe the kept points, predict every point) or
  ``"extrapolation"`` (observe the kept points of the first half ``t < 2.5``, predict
  every point of the second half).
- :func:`spiral_series`: Chen et al. 2018's clockwise/anticlockwise 2-D spirals sampled at
  irregular times; ``task="classification"`` (the direction) or ``"extrapolation"``.
"""

from __future__ import annotations

import math

import torch

from ._irregular import SeriesData, pad_series

__all__ = ["periodic_sines", "spiral_series", "SERIES_TASKS"]

SERIES_TASKS = ("classification", "interpolation", "extrapolation")


def _split(n: int, test_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    n_test = max(1, int(round(test_fraction * n)))
    return perm[n_test:], perm[:n_test]


def _observe(times, values, keep: float, task: str, gen: torch.Generator, horizon: float):
    """Inputs and targets: per series, observed subset (``keep``) and prediction points."""
    obs_t, obs_v, tgt_t, tgt_v = [], [], [], []
    for t, v in zip(times, values):  # a loop over series while *generating* data only
        first = t < horizon / 2 if task == "extrapolation" else torch.ones_like(t, dtype=torch.bool)
        cand = first.nonzero().flatten()
        n_keep = max(1, int(round(keep * len(cand))))
        pick = cand[torch.randperm(len(cand), generator=gen)[:n_keep]].sort().values
        obs_t.append(t[pick])
        obs_v.append(v[pick])
        tgt = (~first).nonzero().flatten() if task == "extrapolation" else torch.arange(len(t))
        tgt_t.append(t[tgt])
        tgt_v.append(v[tgt])
    return pad_series(obs_t, obs_v), pad_series(tgt_t, tgt_v)


def periodic_sines(n: int = 1000, *, n_times: int = 100, horizon: float = 5.0, keep: float = 0.5,
                   task: str = "extrapolation", noise: float = 0.01, test_fraction: float = 0.2,
                   seed: int = 0) -> SeriesData:
    """Rubanova et al.'s periodic sines (see the module docstring); deterministic in ``seed``."""
    if task not in ("interpolation", "extrapolation"):
        raise ValueError(f"periodic_sines task must be 'interpolation' or 'extrapolation', got {task!r}")
    if n < 2 or n_times < 4 or not 0 < keep <= 1:
        raise ValueError(f"need n >= 2, n_times >= 4 and keep in (0, 1]; got {n}, {n_times}, {keep}")
    gen = torch.Generator().manual_seed(seed)
    times = torch.rand(n, n_times, generator=gen, dtype=torch.float64).mul(horizon).sort(1).values  # (N, T)
    freq = 0.4 + 0.4 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    values = torch.sin(2 * math.pi * freq * times) + noise * torch.randn(n, n_times, generator=gen, dtype=torch.float64)
    values = values.float()[..., None]  # (N, T, 1)
    obs, tgt = _observe(list(times), list(values), keep, task, gen, horizon)
    tr, te = _split(n, test_fraction, gen)
    desc = (f"Rubanova et al.'s periodic sines: {n} series sin(2 pi f t), f ~ U[0.4, 0.8], {n_times} irregular "
            f"times on [0, {horizon:g}], {100 * keep:.0f}% observed, {task}; seed {seed}")
    return SeriesData(name="sines", task=task, train=obs.index(tr), test=obs.index(te), target_train=tgt.index(tr),
                      target_test=tgt.index(te), description=desc,
                      info={"n": n, "n_times": n_times, "keep": keep, "seed": seed, "horizon": horizon})


def spiral_series(n: int = 500, *, n_times: int = 60, horizon: float = 6 * math.pi / 2, keep: float = 0.5,
                  task: str = "classification", noise: float = 0.02, test_fraction: float = 0.2,
                  seed: int = 0) -> SeriesData:
    """Chen et al.'s clockwise/anticlockwise spirals at irregular times (label 1 = clockwise)."""
    if task not in SERIES_TASKS:
        raise ValueError(f"spiral task must be one of {SERIES_TASKS}, got {task!r}")
    gen = torch.Generator().manual_seed(seed)
    times = torch.rand(n, n_times, generator=gen, dtype=torch.float64).mul(horizon).sort(1).values
    cw = torch.rand(n, generator=gen) < 0.5
    start = 0.5 + torch.rand(n, 1, generator=gen, dtype=torch.float64)
    r = start + 0.3 * times  # Archimedean spiral r = a + b * theta
    theta = torch.where(cw[:, None], -times, times)
    values = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], -1) / 3.0  # (N, T, 2)
    values = (values + noise * torch.randn(values.shape, generator=gen, dtype=torch.float64)).float()
    obs_task = "interpolation" if task == "classification" else task
    obs, tgt = _observe(list(times), list(values), keep, obs_task, gen, horizon)
    tr, te = _split(n, test_fraction, gen)
    labels = cw.long()
    desc = f"Chen et al.'s spirals: {n} clockwise/anticlockwise 2-D spirals, {n_times} irregular times, {task}"
    if task == "classification":
        return SeriesData(name="spirals", task=task, train=obs.index(tr), test=obs.index(te), y_train=labels[tr],
                          y_test=labels[te], num_classes=2, description=desc, info={"n": n, "seed": seed})
    return SeriesData(name="spirals", task=task, train=obs.index(tr), test=obs.index(te), target_train=tgt.index(tr),
                      target_test=tgt.index(te), description=desc, info={"n": n, "seed": seed})
