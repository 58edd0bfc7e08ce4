"""One training step of ODE-RNN and Latent ODE: per-sample grids (odenet) vs a union grid (torchdiffeq).

Compares, at the same batch, data, weights and solver (rk4, one step per gap between
consecutive times; the union grid has many more gaps), forward + backward of one training
step on Rubanova's periodic-sines extrapolation:

- **odenet**: :class:`odenet.ODERNN` / :class:`odenet.LatentODE`; every series is evolved
  along its own times in one batched solve per event index (``odenet.models.evolve``).
- **union grid**: written the way Rubanova et al.'s code does it: the batch's observation
  and query times are merged into one sorted union; a Python loop over the union time
  points calls ``torchdiffeq.odeint`` from each point to the next and updates the GRU only
  where a series has an observation there (a mask); the Latent ODE decoder is one
  ``odeint`` over the union of target times, read where each series has a target.

Usage: ``python -m benchmarks.bench_timeseries [--quick] [--batch 50]``; writes
``benchmarks/results/timeseries.md``. Goal: odenet at least 2x faster.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torchdiffeq

from odenet.data import periodic_sines
from odenet.models import LatentODE, ODERNN


def _union(obs, target):
    """Union grid of a batch: times (U,), values/mask (B, U, C) of observations, target mask (B, U, C)."""
    B, _, C = obs.values.shape
    real_o = torch.arange(obs.times.shape[1])[None] < obs.lengths[:, None]
    real_t = torch.arange(target.times.shape[1])[None] < target.lengths[:, None]
    tu = torch.unique(torch.cat([obs.times[real_o], target.times[real_t]]))  # sorted union (U,)
    U = len(tu)
    vals = torch.zeros(B, U, C)
    msk = torch.zeros(B, U, C)
    tmask = torch.zeros(B, U, C)
    tvals = torch.zeros(B, U, C)
    io = torch.searchsorted(tu, obs.times)
    it = torch.searchsorted(tu, target.times)
    bi = torch.arange(B)[:, None]
    vals[bi.expand_as(io)[real_o], io[real_o]] = obs.values[real_o]
    msk[bi.expand_as(io)[real_o], io[real_o]] = obs.mask[real_o]
    tvals[bi.expand_as(it)[real_t], it[real_t]] = target.values[real_t]
    tmask[bi.expand_as(it)[real_t], it[real_t]] = target.mask[real_t]
    return tu, vals, msk, tvals, tmask


def _rk4_gap(func, h, t0, t1):
    return torchdiffeq.odeint(func, h, torch.stack([t0, t1]).float(), method="rk4",
                              options=dict(grid_constructor=lambda f, y0, t: t))[-1]


def union_ode_rnn_loss(model: ODERNN, tu, vals, msk, tvals, tmask):
    """ODE-RNN on the union grid (Rubanova-style loop over union time points)."""
    f = model.block.field
    func = lambda t, h: f(t, h)  # noqa: E731
    h = vals.new_zeros(vals.shape[0], model.hidden)
    preds = []
    for i in range(len(tu)):
        if i > 0:
            h = _rk4_gap(func, h, tu[i - 1], tu[i])
        preds.append(model.readout(h))
        x, m = vals[:, i], msk[:, i]
        h_new = model.cell(torch.cat([x * m, m], -1), h)
        seen = (m.sum(-1, keepdim=True) > 0).float()
        h = seen * h_new + (1 - seen) * h
    pred = torch.stack(preds, 1)
    return ((pred - tvals) ** 2 * tmask).sum() / tmask.sum()


def union_latent_ode_loss(model: LatentODE, tu, vals, msk, tvals, tmask):
    """Latent ODE on the union grid: backwards ODE-RNN encoder loop, one decoder odeint over the union."""
    enc = model.encoder
    f = enc.block.field
    func = lambda t, h: f(t, h)  # noqa: E731
    h = vals.new_zeros(vals.shape[0], enc.hidden)
    for i in range(len(tu) - 1, -1, -1):
        if i < len(tu) - 1:
            h = _rk4_gap(func, h, tu[i + 1], tu[i])
        x, m = vals[:, i], msk[:, i]
        h_new = enc.cell(torch.cat([x * m, m], -1), h)
        seen = (m.sum(-1, keepdim=True) > 0).float()
        h = seen * h_new + (1 - seen) * h
    mean, logvar = model.to_posterior(h).chunk(2, -1)
    z0 = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
    g = model.decoder.field
    zs = _decode_union(g, z0, tu)
    pred = model.readout(zs.transpose(0, 1))
    nll = 0.5 * ((pred - tvals) ** 2 * tmask).sum() / tmask.sum() / model.obs_std ** 2
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(-1).mean()
    return nll + kl


def _decode_union(g, z0, tu):
    """One odeint over the union of times with one rk4 step per union gap (torchdiffeq's grid)."""
    return torchdiffeq.odeint(lambda t, z: g(t, z), z0, tu.float(), method="rk4",
                              options=dict(grid_constructor=lambda f, y0, t: t))


def _time(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn().backward()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    reps = 2 if args.quick else 5
    data = periodic_sines(max(args.batch * 2, 100), seed=0)
    idx = torch.arange(args.batch)
    obs, target = data.train.index(idx), data.target_train.index(idx)
    union = _union(obs, target)
    rows = []
    torch.manual_seed(0)
    ode_rnn = ODERNN(1, 32)
    latent = LatentODE(1, 32)
    cases = [
        ("ODE-RNN", lambda: ode_rnn.regression_loss(obs, target)[0], lambda: union_ode_rnn_loss(ode_rnn, *union)),
        ("Latent ODE", lambda: latent.regression_loss(obs, target)[0], lambda: union_latent_ode_loss(latent, *union)),
    ]
    for name, ours, theirs in cases:
        ours(), theirs()  # warm up
        t_o = _time(ours, reps)
        t_u = _time(theirs, reps)
        rows.append((name, t_o, t_u))
    events = int(obs.lengths.max() + target.lengths.max())
    lines = [f"# bench_timeseries: one training step (forward + backward), periodic sines, batch {args.batch}",
             "", f"rk4, one step per gap; per-sample events per series <= {events}, union grid {len(union[0])} "
             "time points; 1 torch thread; medians of {} steps.".format(reps), "",
             "| model | odenet per-sample grids (s) | union grid, torchdiffeq (s) | speed-up |", "|---|---|---|---|"]
    for name, t_o, t_u in rows:
        lines.append(f"| {name} | {t_o:.3f} | {t_u:.3f} | {t_u / t_o:.1f}x |")
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "timeseries.md"
    out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
