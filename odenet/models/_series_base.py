"""What every time-series model shares: the input contract, events, the scan over them, solver swaps.

Input contract (a :class:`odenet.data.SeriesBatch`)::

    values  # (B, T, C)  0 where not observed
    times   # (B, T)     per-sample, non-decreasing; padding repeats the last time
    mask    # (B, T, C)  1 where observed
    lengths # (B,)

Outputs: ``model(batch)`` (= ``model.classify(batch)``) gives class logits ``(B, K)`` (models built with
``num_classes > 0``); ``model.predict(batch, query_times, query_lengths)`` gives predictions
``(B, Q, out_channels)`` at per-sample query times ``(B, Q)`` (interpolation: inside the
observed span; extrapolation: after it).

A model with queries runs over *events*: the observations and the queries of each series
merged by time (:func:`merge_events`, one stable sort per batch, queries first at equal
times so a prediction never sees the observation at its own time).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

import torch
from torch import nn

from ..data._irregular import SeriesBatch, check_series
from ._evolve import SeriesODEBlock

__all__ = ["AbstractSeriesModel", "merge_events", "Events"]


class Events:
    """Observations and queries merged by time (shapes ``(B, E, ...)``)."""

    def __init__(self, values, times, mask, observed, query, qpos):
        self.values = values  # (B, E, C)
        self.times = times  # (B, E)
        self.mask = mask  # (B, E, C)
        self.observed = observed  # (B, E) bool: a real observation with >= 1 observed channel
        self.query = query  # (B, E) bool: a real query
        self.qpos = qpos  # (B, Q) long: event index of each query

    def __len__(self) -> int:
        return int(self.times.shape[1])


def merge_events(batch: SeriesBatch, query_times: Optional[torch.Tensor] = None,
                 query_lengths: Optional[torch.Tensor] = None) -> Events:
    """Merge each series' observations with its queries by time (no loop over samples)."""
    B, T, C = batch.values.shape
    dev = batch.values.device
    real_obs = torch.arange(T, device=dev)[None, :] < batch.lengths[:, None]
    observed = (batch.mask > 0).any(-1) & real_obs  # (B, T)
    if query_times is None:
        return Events(batch.values, batch.times, batch.mask, observed, torch.zeros_like(observed),
                      torch.zeros(B, 0, dtype=torch.long, device=dev))
    Q = query_times.shape[1]
    if query_lengths is None:
        query_lengths = torch.full((B,), Q, dtype=torch.long, device=dev)
    qt = query_times.to(batch.times.dtype)
    real_q = torch.arange(Q, device=dev)[None, :] < query_lengths[:, None]
    # padded queries sit at the last real query time (or at the last observation for none)
    times = torch.cat([qt, batch.times], 1)  # (B, Q+T): queries first, so they sort first at ties
    order = times.argsort(dim=1, stable=True)
    values = torch.cat([batch.values.new_zeros(B, Q, C), batch.values], 1).gather(1, order[..., None].expand(-1, -1, C))
    mask = torch.cat([batch.mask.new_zeros(B, Q, C), batch.mask], 1).gather(1, order[..., None].expand(-1, -1, C))
    obs = torch.cat([torch.zeros_like(real_q), observed], 1).gather(1, order)
    query = torch.cat([real_q, torch.zeros_like(observed)], 1).gather(1, order)
    qpos = order.argsort(dim=1)[:, :Q]  # where each query landed
    return Events(values, times.gather(1, order), mask, obs, query, qpos)


class AbstractSeriesModel(nn.Module):
    """Base of the time-series models (see the module docstring for the contract).

    Subclasses set ``self.config`` (their constructor arguments, stored in checkpoints)
    and list their :class:`~odenet.models.SeriesODEBlock` s in ``ode_blocks()``.
    """

    in_channels: int
    num_classes: int
    out_channels: int

    def ode_blocks(self) -> List[SeriesODEBlock]:
        return [m for m in self.modules() if isinstance(m, SeriesODEBlock)]

    def _start(self, batch: SeriesBatch) -> None:
        if not isinstance(batch, SeriesBatch):
            raise TypeError(f"{type(self).__name__} takes an odenet.data.SeriesBatch, got {type(batch).__name__}")
        check_series(batch.values, batch.times, batch.mask, batch.lengths, channels=self.in_channels)
        for b in self.ode_blocks():
            b.reset_stats()

    def _need_head(self) -> None:
        if not self.num_classes:
            raise ValueError(f"{type(self).__name__} was built without num_classes; it cannot classify")

    def configure_solver(self, **kw) -> "AbstractSeriesModel":
        """Apply ``method``/``steps``/``rtol``/``atol``/``gradient``/``options`` to every ODE block."""
        for b in self.ode_blocks():
            b.configure(**kw)
        return self

    @contextlib.contextmanager
    def using_solver(self, **kw) -> Iterator["AbstractSeriesModel"]:
        """Context manager: :meth:`configure_solver` inside, restore on exit."""
        with contextlib.ExitStack() as stack:
            for b in self.ode_blocks():
                stack.enter_context(b.using(**kw))
            yield self

    @property
    def nfe_forward(self) -> int:
        return sum(b.nfe_forward for b in self.ode_blocks() if b.last_stats is not None)

    @property
    def nfe_backward(self) -> int:
        return sum(b.nfe_backward for b in self.ode_blocks() if b.last_stats is not None)

    def forward(self, batch: SeriesBatch, target: Optional[SeriesBatch] = None):
        """``classify(batch)`` (logits), or ``regression_loss(batch, target)`` when a target is given.

        One entry point, so that a model wrapped in DistributedDataParallel syncs its
        gradients for both kinds of task.
        """
        if target is None:
            return self.classify(batch)
        return self.regression_loss(batch, target)

    def classify(self, batch: SeriesBatch) -> torch.Tensor:
        raise NotImplementedError

    def regression_loss(self, batch: SeriesBatch, target: SeriesBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, prediction)``: masked mean squared error at the target times (overridable)."""
        pred = self.predict(batch, target.times, target.lengths)
        return masked_mse(pred, target), pred


def masked_mse(pred: torch.Tensor, target: SeriesBatch) -> torch.Tensor:
    """Mean squared error over the observed target entries."""
    m = target.mask
    return (((pred - target.values) ** 2) * m).sum() / m.sum().clamp_min(1)


class AbstractRecurrentModel(AbstractSeriesModel):
    """A hidden state run over the events: ``advance`` to each event's time, ``update`` at it.

    ODE models advance by an ODE (``update_at_queries = False``: a query reads the evolved
    state); the RNN baselines advance by nothing and update at queries too, with no input
    observed (``update_at_queries = True``). Inactive events (padding) change nothing.
    """

    update_at_queries = False
    hidden: int

    def _advance(self, h: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, state: dict) -> torch.Tensor:
        return h

    def _update(self, h, x, m, t, dt, active, state: dict) -> torch.Tensor:
        raise NotImplementedError

    def _init_state(self, ev: Events) -> dict:
        return {}

    def _scan(self, ev: Events, *, reverse: bool = False, h0: Optional[torch.Tensor] = None,
              keep: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Final state ``(B, H)`` and, with ``keep``, the state after every event ``(B, E, H)``."""
        B, E = ev.times.shape
        h = h0 if h0 is not None else ev.values.new_zeros(B, self.hidden)
        state = self._init_state(ev)
        order = range(E - 1, -1, -1) if reverse else range(E)
        t_prev = ev.times[:, E - 1 if reverse else 0]
        last = t_prev.clone()  # time of the latest active event, per sample
        outs = [None] * E if keep else None
        for k in order:  # a loop over event indices; every step is batched over samples
            t_k = ev.times[:, k]
            h = self._advance(h, t_prev, t_k, state)
            active = ev.observed[:, k] | (ev.query[:, k] if self.update_at_queries else False)
            h_new = self._update(h, ev.values[:, k], ev.mask[:, k], t_k, (t_k - last).abs(), active, state)
            h = torch.where(active[:, None], h_new, h)
            last = torch.where(active, t_k, last)
            t_prev = t_k
            if keep:
                outs[k] = h
        return h, (torch.stack(outs, 1) if keep else None)
