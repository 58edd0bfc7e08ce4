"""RNN baselines for irregular series: GRU-Δt and GRU-D (Che et al. 2018).

They follow the input contract of :mod:`odenet.models._series_base` and integrate nothing:
time enters as an input (GRU-Δt) or as exponential decays (GRU-D). At a query (a time to
predict at) they update with nothing observed, then read out.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..data._irregular import SeriesBatch
from ._series_base import AbstractRecurrentModel, merge_events

__all__ = ["GRUDelta", "GRUD"]


class _RNNBase(AbstractRecurrentModel):
    update_at_queries = True

    def __init__(self, in_channels: int, hidden: int = 32, num_classes: int = 0, out_channels: Optional[int] = None):
        super().__init__()
        self.in_channels, self.hidden, self.num_classes = in_channels, hidden, num_classes
        self.out_channels = out_channels or in_channels
        self.config = dict(in_channels=in_channels, hidden=hidden, num_classes=num_classes,
                           out_channels=self.out_channels)
        self.readout = nn.Linear(hidden, self.out_channels)
        self.head = nn.Linear(hidden, num_classes) if num_classes else None

    def classify(self, batch: SeriesBatch) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` from the state after the last observation."""
        self._need_head()
        self._start(batch)
        return self.head(self._scan(merge_events(batch))[0])

    def predict(self, batch: SeriesBatch, query_times: torch.Tensor, query_lengths=None) -> torch.Tensor:
        """Predictions ``(B, Q, out_channels)`` at the query times."""
        self._start(batch)
        ev = merge_events(batch, query_times, query_lengths)
        _, hs = self._scan(ev, keep=True)
        return self.readout(hs.gather(1, ev.qpos[..., None].expand(-1, -1, self.hidden)))


class GRUDelta(_RNNBase):
    """GRU-Δt: ``h <- GRUCell([x*m, m, Δt], h)``, with ``Δt`` the time since the previous event."""

    def __init__(self, in_channels: int, hidden: int = 32, num_classes: int = 0, out_channels: Optional[int] = None):
        super().__init__(in_channels, hidden, num_classes, out_channels)
        self.cell = nn.GRUCell(2 * in_channels + 1, hidden)

    def _update(self, h, x, m, t, dt, active, state):
        return self.cell(torch.cat([x * m, m, dt.to(x.dtype)[:, None]], -1), h)


class GRUD(_RNNBase):
    """GRU-D (Che et al. 2018): inputs decay to the training mean and the state decays to zero
    with the time since each channel was last observed.

    ``x_hat = m x + (1 - m) (g_x x_last + (1 - g_x) x_mean)``, ``g_x = exp(-relu(w_x * delta + b_x))``
    per channel; ``h <- g_h h`` with ``g_h = exp(-relu(W_h delta + b_h))``; then
    ``h <- GRUCell([x_hat, m], h)``. ``x_mean`` is a buffer (set it with :meth:`set_mean`;
    zero for standardised data).
    """

    def __init__(self, in_channels: int, hidden: int = 32, num_classes: int = 0, out_channels: Optional[int] = None):
        super().__init__(in_channels, hidden, num_classes, out_channels)
        self.decay_x = nn.Parameter(torch.full((in_channels,), 0.1))
        self.bias_x = nn.Parameter(torch.zeros(in_channels))
        self.decay_h = nn.Linear(in_channels, hidden)
        self.cell = nn.GRUCell(2 * in_channels, hidden)
        self.register_buffer("x_mean", torch.zeros(in_channels))

    def set_mean(self, mean: torch.Tensor) -> "GRUD":
        self.x_mean.copy_(mean)
        return self

    def _init_state(self, ev):
        B, _, C = ev.values.shape
        # last observed value and time per channel (before any observation: the mean, the first time)
        return {"x_last": self.x_mean.expand(B, C).clone(), "t_last": ev.times[:, :1].expand(B, C).clone()}

    def _update(self, h, x, m, t, dt, active, state):
        delta = (t[:, None] - state["t_last"]).abs().to(x.dtype)  # (B, C)
        g_x = torch.exp(-torch.relu(self.decay_x * delta + self.bias_x))
        x_hat = m * x + (1 - m) * (g_x * state["x_last"] + (1 - g_x) * self.x_mean)
        h = torch.exp(-torch.relu(self.decay_h(delta))) * h
        seen = (m > 0) & active[:, None]
        state["x_last"] = torch.where(seen, x, state["x_last"])
        state["t_last"] = torch.where(seen, t[:, None].expand_as(state["t_last"]), state["t_last"])
        return self.cell(torch.cat([x_hat, m], -1), h)
