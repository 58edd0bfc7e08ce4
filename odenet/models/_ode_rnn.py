"""ODE-RNN (Rubanova et al. 2019) and GRU-ODE (De Brouwer et al. 2019): a hidden state that
evolves by an ODE between observations and jumps (a GRU cell) at each observation.

Both follow the input contract of :mod:`odenet.models._series_base`. Between two events
the state of every sample is evolved from its own previous time to its own next time in
one batched solve (:func:`odenet.models.evolve`); zero-length gaps are identity steps.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..data._irregular import SeriesBatch
from ._evolve import SeriesODEBlock
from ._series_base import AbstractRecurrentModel, merge_events

__all__ = ["ODERNN", "GRUODE", "MLPDynamics", "GRUDynamics"]


class MLPDynamics(nn.Module):
    """``dh/dt = W2 tanh(W1 h + b1) + b2``: the ODE-RNN's autonomous hidden dynamics."""

    def __init__(self, hidden: int, units: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, units), nn.Tanh(), nn.Linear(units, hidden))

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # t: (B,), h: (B, H)
        return self.net(h)


class GRUDynamics(nn.Module):
    """GRU-ODE: ``dh/dt = (1 - z) * (g - h)``, ``z = sigmoid(U_z h)``, ``r = sigmoid(U_r h)``,
    ``g = tanh(U_h (r * h))``; no input between observations. ``h`` stays in ``[-1, 1]``
    when it starts there (De Brouwer et al. 2019, the continuous limit of a GRU)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.zr = nn.Linear(hidden, 2 * hidden)
        self.g = nn.Linear(hidden, hidden)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.zr(h)).chunk(2, -1)
        return (1 - z) * (torch.tanh(self.g(r * h)) - h)


def _solver_kw(method, steps, rtol, atol, gradient, options) -> dict:
    return dict(method=method, steps=steps, rtol=rtol, atol=atol, gradient=gradient, options=options)


class ODERNN(AbstractRecurrentModel):
    """ODE-RNN: ``h`` follows ``dh/dt = f(h)`` between observations, ``h <- GRUCell([x*m, m], h)`` at them.

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the series.
    hidden : int
        Size of the hidden state.
    num_classes : int
        Classes of the head on the final state (0: no head).
    out_channels : int, optional
        Channels predicted by :meth:`predict` (default ``in_channels``).
    method, steps, rtol, atol, gradient, options
        The solver configuration of the hidden ODE (``steps`` per gap between events), as in
        :class:`odenet.ODEBlock`; swap it later with ``configure_solver`` / ``using_solver``.
    """

    dynamics_cls = MLPDynamics

    def __init__(self, in_channels: int, hidden: int = 32, num_classes: int = 0, out_channels: Optional[int] = None,
                 *, units: int = 64, method: str = "rk4", steps: Optional[int] = 1, rtol: float = 1e-3,
                 atol: float = 1e-4, gradient: str = "direct", options: Optional[dict] = None):
        super().__init__()
        self.in_channels, self.hidden, self.num_classes = in_channels, hidden, num_classes
        self.out_channels = out_channels or in_channels
        self.config = dict(in_channels=in_channels, hidden=hidden, num_classes=num_classes,
                           out_channels=self.out_channels, units=units,
                           **_solver_kw(method, steps, rtol, atol, gradient, options))
        field = MLPDynamics(hidden, units) if self.dynamics_cls is MLPDynamics else self.dynamics_cls(hidden)
        self.block = SeriesODEBlock(field, **_solver_kw(method, steps, rtol, atol, gradient, options))
        self.cell = nn.GRUCell(2 * in_channels, hidden)
        self.readout = nn.Linear(hidden, self.out_channels)
        self.head = nn.Linear(hidden, num_classes) if num_classes else None

    def _advance(self, h, t0, t1, state):
        return self.block.evolve(h, torch.stack([t0, t1], 1))[-1]

    def _update(self, h, x, m, t, dt, active, state):
        return self.cell(torch.cat([x * m, m], -1), h)

    def encode(self, batch: SeriesBatch) -> torch.Tensor:
        """The state after the last observation, ``(B, hidden)``."""
        self._start(batch)
        return self._scan(merge_events(batch))[0]

    def classify(self, batch: SeriesBatch) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        self._need_head()
        return self.head(self.encode(batch))

    def predict(self, batch: SeriesBatch, query_times: torch.Tensor, query_lengths=None) -> torch.Tensor:
        """Predictions ``(B, Q, out_channels)`` read from the state evolved to each query time."""
        self._start(batch)
        ev = merge_events(batch, query_times, query_lengths)
        _, hs = self._scan(ev, keep=True)  # (B, E, H)
        hq = hs.gather(1, ev.qpos[..., None].expand(-1, -1, self.hidden))  # (B, Q, H)
        return self.readout(hq)


class GRUODE(ODERNN):
    """GRU-ODE: continuous GRU dynamics (:class:`GRUDynamics`) between observations, a GRU-cell
    jump ``h <- GRUCell([x*m, m], h)`` at each observation (arguments as :class:`ODERNN`;
    ``units`` is unused)."""

    dynamics_cls = GRUDynamics
