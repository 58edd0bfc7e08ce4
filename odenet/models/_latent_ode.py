"""Latent ODE (Rubanova et al. 2019): an ODE-RNN encoder gives a Gaussian posterior over the
initial latent state ``z0``, the state at each series' earliest query time; an ODE decoder
evolves ``z0`` to every query time of each series (one solve over its observation and query
times merged, those before ``z0``'s time raised to it); trained on the ELBO.

The encoder's state is carried by its own ODE to ``z0``'s time before ``q(z0)`` is read
from it: for extrapolation (``z0``'s time after the observations) the encoder runs forwards,
as an ODE-RNN does, so ``q(z0)`` knows how far each series' last observation lies before
``z0``'s time; for interpolation and classification it runs backwards (Rubanova et al.'s
direction). With per-series irregular times that gap differs from series to series; a
backward encoder read at the first observation could not see it and the Latent ODE's test
MSE on the periodic-sines extrapolation stalled near 0.07 (docs/timeseries.md).

``ELBO = E_q[log p(x | z0)] - KL(q(z0 | x) || N(0, I))`` with a Gaussian observation model
of fixed standard deviation ``obs_std``; the log-likelihood is averaged over the observed
target points of a series (as Rubanova et al. do), the KL is summed over latent
dimensions and weighted by ``kl_weight`` (linearly warmed up over ``kl_warmup`` training
batches). ``n_samples`` draws of ``z0`` per series average
the ELBO. Classification puts a linear head on the posterior mean.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..data._irregular import SeriesBatch
from ._evolve import SeriesODEBlock
from ._ode_rnn import ODERNN, MLPDynamics
from ._series_base import AbstractSeriesModel, merge_events

__all__ = ["LatentODE"]


class LatentODE(AbstractSeriesModel):
    """Latent ODE with an ODE-RNN encoder (forwards for extrapolation, backwards otherwise) and an ODE decoder.

    Parameters
    ----------
    in_channels, hidden, num_classes, out_channels
        As for :class:`odenet.ODERNN` (``hidden``: the encoder's state size).
    latent : int
        Size of ``z0``.
    obs_std : float
        Standard deviation of the Gaussian observation noise.
    n_samples : int
        Samples of ``z0`` per series in :meth:`regression_loss`.
    kl_weight : float
        Weight of the KL term (after the warm-up).
    kl_warmup : int
        KL annealing: the KL weight rises linearly from 0 to ``kl_weight`` over the first
        ``kl_warmup`` training batches (counted in a buffer, so checkpoints resume it;
        0: no warm-up). Rubanova et al. anneal the KL term too.
    method, steps, rtol, atol, gradient, options
        Solver configuration of the encoder and decoder ODEs, as in :class:`odenet.ODEBlock`.

    The posterior's standard deviation starts at 0.01 (the log-variance bias is initialised
    to ``2 log 0.01``): at initialisation the encoder's means differ across series by ~0.01,
    and with a unit standard deviation the sampled ``z0`` were noise that the decoder
    learnt to ignore (predicting the mean) for the first epochs.
    """

    def __init__(self, in_channels: int, hidden: int = 32, num_classes: int = 0, out_channels: Optional[int] = None,
                 *, latent: int = 16, units: int = 64, obs_std: float = 0.01, n_samples: int = 1,
                 kl_weight: float = 1.0, kl_warmup: int = 0, method: str = "rk4", steps: Optional[int] = 1, rtol: float = 1e-3,
                 atol: float = 1e-4, gradient: str = "direct", options: Optional[dict] = None):
        super().__init__()
        if not obs_std > 0 or n_samples < 1:
            raise ValueError(f"need obs_std > 0 and n_samples >= 1, got {obs_std}, {n_samples}")
        if not (isinstance(kl_warmup, int) and kl_warmup >= 0) or not kl_weight >= 0:
            raise ValueError(f"need kl_warmup a non-negative int and kl_weight >= 0, got {kl_warmup!r}, {kl_weight!r}")
        self.in_channels, self.hidden, self.num_classes, self.latent = in_channels, hidden, num_classes, latent
        self.out_channels = out_channels or in_channels
        self.obs_std, self.n_samples, self.kl_weight = float(obs_std), int(n_samples), float(kl_weight)
        self.kl_warmup = int(kl_warmup)
        self.register_buffer("kl_batches", torch.zeros((), dtype=torch.long))  # training batches seen
        solver = dict(method=method, steps=steps, rtol=rtol, atol=atol, gradient=gradient, options=options)
        self.config = dict(in_channels=in_channels, hidden=hidden, num_classes=num_classes,
                           out_channels=self.out_channels, latent=latent, units=units, obs_std=obs_std,
                           n_samples=n_samples, kl_weight=kl_weight, kl_warmup=kl_warmup, **solver)
        self.encoder = ODERNN(in_channels, hidden, units=units, **solver)
        self.to_posterior = nn.Linear(hidden, 2 * latent)
        with torch.no_grad():  # q(z0) starts narrow (std 0.01): see the class docstring
            self.to_posterior.bias[latent:] = 2 * math.log(0.01)
        self.decoder = SeriesODEBlock(MLPDynamics(latent, units), **solver)
        self.readout = nn.Sequential(nn.Linear(latent, units), nn.Tanh(), nn.Linear(units, self.out_channels))
        self.head = nn.Linear(latent, num_classes) if num_classes else None

    def posterior(self, batch: SeriesBatch, t_ref: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``(B, latent)`` of ``q(z0 | x)``, ``z0`` the latent state at ``t_ref`` ``(B,)``.

        Without ``t_ref`` (classification) the encoder runs backwards and ``q(z0)`` is read from
        its state at each series' first observation. With it, the encoder's state is carried
        by the encoder's own ODE to ``t_ref`` (an extra event in its scan): forwards when every
        series' ``t_ref`` lies at or after its last observation (extrapolation), backwards
        otherwise (where ``t_ref`` precedes the observations, as in interpolation, the scan ends
        at ``t_ref``; where it lies among them, at the first observation).
        """
        self._start(batch)
        if t_ref is None:
            ev, forward = merge_events(batch), False
        else:
            t_ref = t_ref.to(batch.times.dtype)
            forward = bool((t_ref >= batch.times.max(1).values).all())
            ev = merge_events(batch, t_ref[:, None])
        h, _ = self.encoder._scan(ev, reverse=not forward)
        mean, logvar = self.to_posterior(h).chunk(2, -1)
        return mean, logvar.clamp(-10, 10)

    def classify(self, batch: SeriesBatch) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` from the posterior mean."""
        self._need_head()
        return self.head(self.posterior(batch)[0])

    def decoder_grid(self, batch: SeriesBatch, query_times: torch.Tensor, query_lengths=None):
        """The decoder's per-sample grid ``(B, 1 + E)`` and where the queries lie in it ``(B, Q)``.

        ``z0`` is the latent state at ``t_ref``, each series' earliest query time (as in
        Rubanova et al.'s code, whose decoder solve starts at the first time to predict). The
        grid is ``t_ref`` followed by the observation and query times merged by time, the
        times before ``t_ref`` raised to it (identity steps): for interpolation the decoder
        passes through the observation times, so its fixed steps stay as short as the data's
        gaps; for extrapolation it starts where the predictions start.

        (With ``t_ref`` at the first observation, an extrapolation's decoder had to unroll the
        latent oscillator over the whole observed half before its first target, and the
        model only learnt to predict the mean: see docs/timeseries.md.)
        """
        ev = merge_events(batch, query_times, query_lengths)
        t_ref = query_times.to(batch.times.dtype).min(1).values[:, None]  # padded queries repeat a real one
        return torch.cat([t_ref, torch.maximum(ev.times, t_ref)], 1), ev.qpos + 1

    def decode(self, z0: torch.Tensor, grid: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
        """Predictions ``(B, Q, out)`` from ``z0`` ``(B, latent)`` at ``grid[:, 0]``, read at the grid
        positions ``qpos`` ``(B, Q)``: ONE solve over each series' grid (:meth:`decoder_grid`)."""
        zs = self.decoder.evolve(z0, grid).transpose(0, 1)  # (B, K, latent)
        return self.readout(zs.gather(1, qpos[..., None].expand(-1, -1, self.latent)))

    def predict(self, batch: SeriesBatch, query_times: torch.Tensor, query_lengths=None) -> torch.Tensor:
        """Predictions ``(B, Q, out)`` decoded from the posterior mean."""
        grid, qpos = self.decoder_grid(batch, query_times, query_lengths)
        mean, _ = self.posterior(batch, grid[:, 0])
        return self.decode(mean, grid, qpos)

    def current_kl_weight(self) -> float:
        """The KL weight of the next batch: ``kl_weight * min(1, batches / kl_warmup)``."""
        if not self.kl_warmup:
            return self.kl_weight
        return self.kl_weight * min(1.0, float(self.kl_batches) / self.kl_warmup)

    def regression_loss(self, batch: SeriesBatch, target: SeriesBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-ELBO averaged over series, mean prediction at the targets (B, Q, out))``."""
        grid, qpos = self.decoder_grid(batch, target.times, target.lengths)
        mean, logvar = self.posterior(batch, grid[:, 0])
        S, (B, L) = self.n_samples, mean.shape
        std = (0.5 * logvar).exp()
        z0 = (mean + std * torch.randn(S, B, L, dtype=mean.dtype, device=mean.device)).reshape(S * B, L)
        pred = self.decode(z0, grid.repeat(S, 1), qpos.repeat(S, 1)).view(S, B, *target.values.shape[1:])
        m = target.mask
        sq = ((pred - target.values) ** 2 * m).sum((2, 3))  # (S, B)
        n = m.sum((1, 2)).clamp_min(1)
        nll = 0.5 * sq / self.obs_std ** 2 / n + 0.5 * math.log(2 * math.pi * self.obs_std ** 2)
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(-1)  # (B,)
        loss = (nll.mean(0) + self.current_kl_weight() * kl).mean()
        if self.training:
            self.kl_batches += 1
        return loss, pred.mean(0)
