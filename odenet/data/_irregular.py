"""Irregularly sampled series: padded batches with masks, checks, dropping observations.

A batch of ``B`` series is a :class:`SeriesBatch` of padded tensors::

    values  # (B, T, C)  float; 0 where not observed
    times   # (B, T)     float64; non-decreasing per series; padding repeats the last time
    mask    # (B, T, C)  float in {0, 1}; 1 where the channel is observed
    lengths # (B,)       int64; number of real time points of each series (>= 1)

Padding positions carry the series' last time, so every model sees a zero-length gap
there (an identity step of the ODE) and an all-zero mask (no update): padding changes
nothing. :func:`pad_series` builds a batch from ragged per-series tensors (with
:func:`torch.nn.utils.rnn.pad_sequence`), :func:`collate_series` is the same as a
``collate_fn`` for a :class:`torch.utils.data.DataLoader`, :func:`drop_observations`
removes a fraction of each series' time points (Kidger et al. 2020) with a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

__all__ = ["SeriesBatch", "SeriesData", "pad_series", "collate_series", "drop_observations", "check_series"]


@dataclass
class SeriesBatch:
    """Padded irregular series (see the module docstring for the shapes and the padding rule).

    Attributes
    ----------
    values : Tensor (B, T, C)
    times : Tensor (B, T)
    mask : Tensor (B, T, C)
    lengths : Tensor (B,)
    """

    values: torch.Tensor
    times: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self):
        check_series(self.values, self.times, self.mask, self.lengths)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def channels(self) -> int:
        return int(self.values.shape[-1])

    def to(self, device) -> "SeriesBatch":
        return SeriesBatch(self.values.to(device), self.times.to(device), self.mask.to(device),
                           self.lengths.to(device))

    def index(self, idx: torch.Tensor) -> "SeriesBatch":
        """The series at ``idx`` (trimmed to their longest length)."""
        idx = idx.to(self.values.device)
        t_max = max(int(self.lengths[idx].max()), 1) if len(idx) else 1
        return SeriesBatch(self.values[idx, :t_max], self.times[idx, :t_max], self.mask[idx, :t_max],
                           self.lengths[idx])


def check_series(values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor,
                 lengths: Optional[torch.Tensor] = None, *, channels: Optional[int] = None) -> None:
    """Raise ``ValueError`` naming the series that breaks the contract of a :class:`SeriesBatch`.

    Checks shapes, NaN times, times that decrease within a series, series without any
    observation, NaN values where observed, and (if ``channels`` is given) the channel count.
    """
    if values.ndim != 3:
        raise ValueError(f"values must be (B, T, C), got shape {tuple(values.shape)}")
    B, T, C = values.shape
    if tuple(times.shape) != (B, T):
        raise ValueError(f"times must be (B, T) = {(B, T)} like values, got {tuple(times.shape)}")
    if tuple(mask.shape) != (B, T, C):
        raise ValueError(f"mask must be (B, T, C) = {(B, T, C)} like values, got {tuple(mask.shape)}")
    if channels is not None and C != channels:
        raise ValueError(f"the series have {C} channel(s) but the model was built for {channels}; "
                         f"build the model with in_channels={C}")
    if B == 0:
        return
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long)
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths must be (B,) = ({B},), got {tuple(lengths.shape)}")
    lengths = lengths.to(times.device)
    if bool((lengths < 1).any()) or bool((lengths > T).any()):
        b = int(((lengths < 1) | (lengths > T)).nonzero()[0])
        raise ValueError(f"series {b} has length {int(lengths[b])}; lengths must lie in [1, {T}] "
                         "(a series needs at least one observation)")
    real = torch.arange(T, device=times.device)[None, :] < lengths[:, None]  # (B, T)
    bad = torch.isnan(times) & real
    if bool(bad.any()):
        b = int(bad.any(1).nonzero()[0])
        raise ValueError(f"series {b} has NaN times; every observation needs a finite time")
    if T > 1:
        dec = (times[:, 1:] < times[:, :-1]) & real[:, 1:]
        if bool(dec.any()):
            b, k = (int(v) for v in dec.nonzero()[0])
            raise ValueError(f"times of series {b} decrease at index {k + 1} ({float(times[b, k]):g} -> "
                             f"{float(times[b, k + 1]):g}); sort each series by time")
    observed = (mask > 0) & real[..., None]
    empty = ~observed.flatten(1).any(1)
    if bool(empty.any()):
        b = int(empty.nonzero()[0])
        raise ValueError(f"series {b} has no observations (its mask is all zero); remove it")
    if bool((torch.isnan(values) & observed).any()):
        raise ValueError("values are NaN where the mask says observed; set mask=0 there")


def pad_series(times: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
               masks: Optional[Sequence[torch.Tensor]] = None) -> SeriesBatch:
    """A :class:`SeriesBatch` from ragged series: ``times[i]`` (T_i,), ``values[i]`` (T_i, C).

    Missing values may be NaN (they get mask 0) or be given by ``masks[i]`` (T_i, C).
    """
    if not len(times) or len(times) != len(values):
        raise ValueError(f"give as many time vectors as value arrays (got {len(times)} and {len(values)})")
    ts = [torch.as_tensor(t, dtype=torch.float64).reshape(-1) for t in times]
    vs = [torch.as_tensor(v, dtype=torch.float32) for v in values]
    vs = [v[:, None] if v.ndim == 1 else v for v in vs]
    chans = {int(v.shape[-1]) for v in vs}
    if len(chans) > 1:
        raise ValueError(f"all series must have the same number of channels, got {sorted(chans)}")
    for i, (t, v) in enumerate(zip(ts, vs)):
        if len(t) != len(v):
            raise ValueError(f"series {i}: {len(t)} times but {len(v)} rows of values")
        if len(t) == 0:
            raise ValueError(f"series {i} has no observations; remove it")
    if masks is None:
        ms = [(~torch.isnan(v)).float() for v in vs]
    else:
        ms = [torch.as_tensor(m, dtype=torch.float32).reshape(v.shape) for m, v in zip(masks, vs)]
    vs = [torch.nan_to_num(v) * m for v, m in zip(vs, ms)]
    lengths = torch.tensor([len(t) for t in ts], dtype=torch.long)
    t_pad = pad_sequence(ts, batch_first=True)  # (B, T)
    last = torch.stack([t[-1] for t in ts])
    pos = torch.arange(t_pad.shape[1])[None, :]
    t_pad = torch.where(pos < lengths[:, None], t_pad, last[:, None])
    return SeriesBatch(pad_sequence(vs, batch_first=True), t_pad, pad_sequence(ms, batch_first=True), lengths)


def collate_series(items: Sequence[dict]) -> tuple[SeriesBatch, Optional[torch.Tensor]]:
    """``collate_fn`` for a DataLoader over dicts ``{"times", "values", ["mask"], ["label"]}``."""
    batch = pad_series([it["times"] for it in items], [it["values"] for it in items],
                       [it["mask"] for it in items] if all("mask" in it for it in items) else None)
    labels = torch.tensor([int(it["label"]) for it in items]) if all("label" in it for it in items) else None
    return batch, labels


def drop_observations(batch: SeriesBatch, rate: float, *, seed: int = 0) -> SeriesBatch:
    """Remove a fraction ``rate`` of each series' time points, at random per series.

    Kidger et al. 2020: ``round(rate * length)`` points of each series are dropped
    (at least one is always kept), chosen by a generator seeded with ``seed``; the
    kept points are packed to the front, so every series has its own time grid and
    its own, shorter length. ``rate=0`` returns the batch unchanged.
    """
    if not (0.0 <= float(rate) < 1.0):
        raise ValueError(f"drop rate must lie in [0, 1), got {rate!r}")
    if rate == 0:
        return batch
    B, T, C = batch.values.shape
    gen = torch.Generator().manual_seed(int(seed))
    lengths = batch.lengths.cpu()
    keep_n = torch.clamp(lengths - torch.round(lengths.double() * float(rate)).long(), min=1)  # (B,)
    score = torch.rand(B, T, generator=gen)
    score = torch.where(torch.arange(T)[None, :] < lengths[:, None], score, torch.full_like(score, 2.0))
    rank = score.argsort(1).argsort(1)  # rank of each point among its series' points
    keep = rank < keep_n[:, None]  # (B, T): a random subset of keep_n real points
    # pack the kept points to the front, in time order (a stable sort on "not kept")
    order = (~keep).to(torch.int8).argsort(dim=1, stable=True).to(batch.values.device)
    gather = order[..., None].expand(B, T, C)
    values = batch.values.gather(1, gather)
    mask = batch.mask.gather(1, gather)
    times = batch.times.gather(1, order)
    t_max = int(keep_n.max())
    new_len = keep_n.to(batch.lengths.device)
    pos = torch.arange(t_max, device=times.device)[None, :]
    real = pos < new_len[:, None]
    last = times.gather(1, (new_len - 1)[:, None])
    times = torch.where(real, times[:, :t_max], last)
    values = values[:, :t_max] * real[..., None]
    mask = mask[:, :t_max] * real[..., None]
    return SeriesBatch(values, times, mask, new_len)


@dataclass
class SeriesData:
    """A time-series data set: train/test :class:`SeriesBatch` plus labels or targets.

    For classification ``y_train``/``y_test`` hold int64 labels ``(N,)``; for interpolation
    and extrapolation ``target_train``/``target_test`` hold the series to predict
    (a :class:`SeriesBatch` at the query times). ``description`` says where the data came
    from (as scikit-learn's ``load_*`` functions do); ``info`` holds the settings.
    """

    name: str
    task: str  # "classification", "interpolation" or "extrapolation"
    train: SeriesBatch
    test: SeriesBatch
    y_train: Optional[torch.Tensor] = None
    y_test: Optional[torch.Tensor] = None
    target_train: Optional[SeriesBatch] = None
    target_test: Optional[SeriesBatch] = None
    num_classes: int = 0
    description: str = ""
    info: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.train.channels

    def dropped(self, rate: float, *, seed: int = 0) -> "SeriesData":
        """This data set with ``rate`` of every series' observations removed (train and test)."""
        if rate == 0:
            return self
        return replace(self, train=drop_observations(self.train, rate, seed=seed),
                       test=drop_observations(self.test, rate, seed=seed + 1),
                       info=dict(self.info, drop=float(rate), drop_seed=int(seed)))


def standardise(train: SeriesBatch, *others: SeriesBatch) -> tuple:
    """Scale every channel by the mean and std of its observed training values."""
    m = train.mask
    n = m.sum((0, 1)).clamp_min(1)
    mean = (train.values * m).sum((0, 1)) / n
    var = (((train.values - mean) * m) ** 2).sum((0, 1)) / n
    std = var.sqrt().clamp_min(1e-6)
    out = [replace(b, values=(b.values - mean) / std * b.mask) for b in (train, *others)]
    return (*out, mean, std)


def _np(x) -> np.ndarray:  # pragma: no cover - tiny helper for plots
    return x.detach().cpu().numpy()
