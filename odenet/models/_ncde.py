"""Neural controlled differential equation (Kidger et al. 2020) on an interpolated control path.

The observations become a continuous path ``X(t)`` with channels ``[t, x (last value carried
forward)]`` and, with ``intensity=True``, the cumulative count of observations per channel;
it is interpolated by a natural cubic spline or Hermite cubics with backward differences
(:mod:`odenet.data._interpolation`).
The CDE ``dz = g(z) dX`` is solved as the ODE ``dz/dt = g(z) dX/dt`` with ``dX/dt`` from the
interpolant, so every method and gradient mode of the solver applies (:func:`odenet.models.evolve`
over each series' own knots; ``steps`` per knot interval). Beyond the last knot the path
continues in its time channel only (``dX/dt = e_t``), which lets the model extrapolate.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..data._interpolation import INTERPOLATIONS, CubicPath
from ..data._irregular import SeriesBatch
from ._evolve import SeriesODEBlock
from ._series_base import AbstractSeriesModel, merge_events

__all__ = ["NeuralCDE", "CDEField", "control_path"]


class CDEField(nn.Module):
    """``g(z)``: an MLP from the state ``(B, H)`` to a matrix ``(B, H, X)`` (tanh-bounded, times ``X^-1/2``)."""

    def __init__(self, hidden: int, path_channels: int, units: int = 64):
        super().__init__()
        self.hidden, self.path_channels = hidden, path_channels
        self.net = nn.Sequential(nn.Linear(hidden, units), nn.ReLU(), nn.Linear(units, hidden * path_channels), nn.Tanh())

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # scaled by 1/sqrt(X) so that |g(z) dX| does not grow with the number of path channels
        return self.net(z).view(-1, self.hidden, self.path_channels) * self.path_channels ** -0.5


def _carry_forward(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each channel's last observed value (the first observed one before it): ``(B, T, C)``."""
    B, T, C = values.shape
    obs = mask > 0
    pos = torch.arange(T, device=values.device)[None, :, None].expand(B, T, C)
    idx = torch.where(obs, pos, torch.full_like(pos, -1)).cummax(1).values
    first = torch.where(obs, pos, torch.full_like(pos, T)).min(1, keepdim=True).values.clamp_max(T - 1)
    idx = torch.where(idx < 0, first.expand_as(idx), idx)
    return values.gather(1, idx)


def control_path(batch: SeriesBatch, interpolation: str = "hermite_backward", *,
                 intensity: bool = False) -> CubicPath:
    """The interpolated control path of ``batch``: channels ``[t, x]`` ``(1 + C)``, and with
    ``intensity`` the cumulative mask (observational intensity) too: ``(1 + 2C)``."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
    x = _carry_forward(batch.values, batch.mask)
    t = batch.times.to(x.dtype)[..., None]
    parts = [t, x, batch.mask.cumsum(1)] if intensity else [t, x]
    X = torch.cat(parts, -1)  # (B, T, 1 + C) or (B, T, 1 + 2C)
    return INTERPOLATIONS[interpolation](batch.times, X, batch.lengths)


class NeuralCDE(AbstractSeriesModel):
    """Neural CDE ``dz = g(z) dX(t)``, ``z(t_0) = W X(t_0)``; a linear head/readout on ``z``.

    Parameters
    ----------
    in_channels, hidden, num_classes, out_channels
        As for :class:`odenet.ODERNN`.
    interpolation : {"hermite_backward", "natural_cubic"}
        The control path's interpolant.
    intensity : bool
        Append the cumulative mask of every channel (Kidger et al.'s observational
        intensity) to the path. Off by default: when observations are dropped at random
        the count carries no information about the class, and its derivative (``1/gap`` at
        every knot) is noise the model overfits to. Measured on JapaneseVowels at 30%
        dropped, 20 epochs, lr 1e-2: 76.8% with it, 96.5% without (docs/timeseries.md).
        Turn it on for data whose missingness is informative.
    method, steps, rtol, atol, gradient, options
        Solver configuration (``steps`` per knot interval), as in :class:`odenet.ODEBlock`.
    """

    def __init__(self, in_channels: int, hidden: int = 32, num_classes: int = 0, out_channels: Optional[int] = None,
                 *, units: int = 64, interpolation: str = "hermite_backward", method: str = "rk4",
                 steps: Optional[int] = 1, rtol: float = 1e-3, atol: float = 1e-4, gradient: str = "direct",
                 options: Optional[dict] = None, intensity: bool = False):
        super().__init__()
        self.intensity = bool(intensity)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        self.in_channels, self.hidden, self.num_classes = in_channels, hidden, num_classes
        self.out_channels = out_channels or in_channels
        self.interpolation = interpolation
        solver = dict(method=method, steps=steps, rtol=rtol, atol=atol, gradient=gradient, options=options)
        self.config = dict(in_channels=in_channels, hidden=hidden, num_classes=num_classes,
                           out_channels=self.out_channels, units=units, interpolation=interpolation,
                           intensity=self.intensity, **solver)
        px = 1 + (2 if intensity else 1) * in_channels
        self.initial = nn.Linear(px, hidden)
        self.block = SeriesODEBlock(CDEField(hidden, px, units), **solver)
        self.readout = nn.Linear(hidden, self.out_channels)
        self.head = nn.Linear(hidden, num_classes) if num_classes else None

    def _solve(self, batch: SeriesBatch, grid: torch.Tensor) -> torch.Tensor:
        """States ``(K, B, H)`` at the per-sample times ``grid`` ``(B, K)``."""
        path = control_path(batch, self.interpolation, intensity=self.intensity)
        t_first = batch.times[:, 0]
        t_last = batch.times.gather(1, (batch.lengths - 1)[:, None])[:, 0]
        e_t = torch.zeros(path.a.shape[-1], dtype=path.a.dtype, device=path.a.device)
        e_t[0] = 1.0
        g = self.block.field

        def field(t, z):  # t: (B,), z: (B, H)
            inside = ((t >= t_first) & (t <= t_last))[:, None]
            dX = torch.where(inside, path.derivative(t), e_t)  # (B, X)
            return (g(t, z) @ dX.to(z.dtype)[..., None])[..., 0]

        z0 = self.initial(path.a[:, 0])  # X at the first knot
        if grid.shape[1] == 1:
            grid = grid.expand(-1, 2)
        return self.block.evolve(z0, grid, field=field)

    def classify(self, batch: SeriesBatch) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` from ``z`` at each series' last observation."""
        self._need_head()
        self._start(batch)
        return self.head(self._solve(batch, batch.times)[-1])

    def predict(self, batch: SeriesBatch, query_times: torch.Tensor, query_lengths=None) -> torch.Tensor:
        """Predictions ``(B, Q, out_channels)`` from ``z`` at the query times."""
        self._start(batch)
        ev = merge_events(batch, query_times, query_lengths)
        zs = self._solve(batch, ev.times).transpose(0, 1)  # (B, E, H)
        return self.readout(zs.gather(1, ev.qpos[..., None].expand(-1, -1, self.hidden)))
