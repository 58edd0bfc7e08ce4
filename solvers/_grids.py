"""Per-sample time grids: validation, shared helpers and the fixed-step loop.

A per-sample grid is a ``t`` of shape ``[B, T]`` with ``y0`` of shape ``[B, ...]``: row ``b``
holds the output times of sample ``b``, strictly monotonic, all rows in the same
direction. A series shorter than ``T`` is padded by repeating its last time (torchode's
convention); ``lengths[b]`` counts its distinct times. The loops here keep one time and
one step size per sample (``[B]`` tensors), never loop over samples in Python, and hand the
vector field a ``[B]`` time tensor. Outputs are ``[T, B, ...]``.

The fixed-step loop has no host synchronisation: the plan (number of steps, which output
lies in which step) is made once from the times before the loop.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from ._base import describe_info
from ._compile import compiling
from ._solution import Status

__all__ = ["check_t_batched", "batch_rms_norm", "batch_norm_of", "expand_b", "fixed_batched"]


def check_t_batched(t: torch.Tensor, y0: torch.Tensor, values: bool = True) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate a per-sample grid ``t`` ``[B, T]`` against ``y0`` ``[B, ...]``.

    Returns ``(t, lengths, reverse)``: ``t`` on ``y0``'s device, ``lengths`` (``[B]`` int64,
    the number of distinct times per row, on the device) and whether the rows decrease.
    One host synchronisation, before any solving. ``values=False`` (under
    ``torch.compile``, :mod:`solvers._compile`): only the shapes are checked, no value is
    read, and ``reverse`` is ``False`` (the fixed-step loop then steps in the user's time).
    """
    if not t.dtype.is_floating_point:
        raise TypeError(f"`t` must be a floating-point tensor (float64 recommended), got {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"a per-sample `t` must have shape [B, T], got {tuple(t.shape)}")
    if y0.ndim < 1 or y0.shape[0] != t.shape[0]:
        got = tuple(y0.shape)
        raise ValueError(f"a per-sample `t` of shape {tuple(t.shape)} needs y0 of shape [{t.shape[0]}, ...] (one row per sample), got y0 of shape {got}")
    if t.shape[1] < 1:
        raise ValueError("`t` must contain at least one time per sample")
    if t.device != y0.device:
        t = t.to(y0.device)
    td = t.detach()
    d = td[:, 1:] - td[:, :-1]  # (B, T-1)
    if not values:
        return t, 1 + (d != 0).sum(dim=1), False
    flags = torch.stack([
        (~torch.isfinite(td)).any(),
        (d > 0).any(dim=1).any(),
        (d < 0).any(dim=1).any(),
        ((d > 0).any(dim=1) & (d < 0).any(dim=1)).any(),
    ]).tolist() if t.shape[1] > 1 else [bool((~torch.isfinite(td)).any()), False, False, False]
    if flags[0]:
        raise ValueError("`t` contains NaN or inf; every output time must be finite")
    if flags[3]:
        rows = torch.nonzero((d > 0).any(dim=1) & (d < 0).any(dim=1))[:, 0].tolist()
        raise ValueError(f"each row of a per-sample `t` must be strictly monotonic; rows {rows[:5]} go both up and down")
    if flags[1] and flags[2]:
        raise ValueError("all rows of a per-sample `t` must run in the same direction; some increase and some decrease")
    reverse = bool(flags[2])
    if t.shape[1] == 1:
        return t, torch.ones(t.shape[0], dtype=torch.long, device=t.device), reverse
    moves = (d < 0) if reverse else (d > 0)  # (B, T-1)
    # Padding repeats the last time: once a row stops moving it must stay still.
    stopped = torch.cumsum((~moves).to(torch.int32), dim=1) > 0
    bad = stopped & moves
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(dim=1))[:, 0].tolist()
        raise ValueError(
            f"rows {rows[:5]} of a per-sample `t` repeat a time and then move on; times must be strictly "
            "monotonic, and padding may only repeat the row's last time at its end"
        )
    lengths = 1 + moves.sum(dim=1)
    return t, lengths, reverse


def expand_b(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` -> ``[B, 1, ..., 1]`` broadcastable against ``like`` ``[B, ...]``."""
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


def batch_rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS over all but the batch dimension: ``[B, ...] -> [B]``."""
    x = x.reshape(x.shape[0], -1)
    if x.is_complex():
        x = x.abs()
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0])
    return torch.sqrt(torch.mean(x * x, dim=1))


def batch_norm_of(user: Optional[Callable]) -> Callable:
    """The per-sample error norm: RMS, or a user norm applied to each sample by ``vmap``."""
    if user is None:
        return batch_rms_norm
    vm = torch.vmap(user)

    def norm(x):
        try:
            out = vm(x)
        except Exception as e:  # re-raised with the contract, never swallowed
            raise TypeError(
                "on a per-sample grid a custom `norm` is applied to each sample with torch.vmap and must "
                f"return a scalar tensor per sample; it raised {type(e).__name__}: {e}"
            ) from e
        if not isinstance(out, torch.Tensor) or out.shape != x.shape[:1]:
            raise TypeError(f"a custom `norm` must return one scalar per sample, got shape {tuple(getattr(out, 'shape', ()))}")
        return out.real.to(x.real.dtype)

    return norm


def add_sample_stats(stats, B: int, device) -> None:
    """Per-sample counters on ``stats`` (``[B]`` int64 tensors)."""
    z = lambda: torch.zeros(B, dtype=torch.long, device=device)
    if stats.sample_f_evals is None:
        stats.sample_f_evals, stats.sample_accepted, stats.sample_rejected = z(), z(), z()


# ----------------------------------------------------------------------------- fixed steps


def _masked_step(field, method, cfg, stats, on_step, y, f0, ta, tb, hb, live, tdt, rdt):
    """One step of every sample from ``ta`` to ``tb`` (``hb = tb - ta``, ``[B]``); samples not
    ``live`` are held.

    Returns the new state and the derivative to reuse next step (``None``: evaluate it),
    or ``(None, res)`` when an implicit stage did not converge (``res.info`` says more).
    """
    ts = [(ta + c * hb).to(tdt) for c in method.stage_c]
    h = expand_b(hb.to(rdt), y)
    e0 = stats.n_f_evals
    if f0 is None:
        f0 = field(ts[0], y)
    res = method.step(field, ts, y, h, f0)
    if not res.ok:
        return None, res
    if on_step is not None:
        on_step(res, live, hb)
    if cfg.on_batch_step is not None:  # dense output: f1 of a non-FSAL step is the next step's f0
        cfg.on_batch_step(res, live, ta, tb, res.f1)
    keep = expand_b(live, y)
    y1 = torch.where(keep, res.y1, y)
    stats.sample_f_evals += (stats.n_f_evals - e0) * live
    stats.sample_accepted += live
    f1 = None if (cfg.perturb or res.f1 is None) else torch.where(keep, res.f1, f0)
    return y1, f1


def _root_failure(outs, res, i, ta, cfg):
    """The outcome of a batched step whose implicit solve failed (one host read, on failure)."""
    from ._integrate import Outcome, _root_detail, show_t

    samples = (res.info or {}).get("samples")
    if samples:  # the root finder says which samples did not converge: name the first
        b = samples[0]
        t0 = float(ta[b])
        extra = describe_info(res.info, skip=("samples",) if len(samples) == 1 else ())
        detail = (f"the implicit solve of batched step {i} (sample {b} at t={show_t(cfg, t0):.6g}) did not converge"
                  + (f" ({extra})" if extra else ""))
        return Outcome(outs, Status.ROOT_FINDER, t0, detail, sample=b)
    t0 = float(ta.min())
    detail = _root_detail(res, i, show_t(cfg, t0)).replace(f"step {i} (t=", f"batched step {i} (earliest sample at t=")
    return Outcome(outs, Status.ROOT_FINDER, t0, detail)


def fixed_batched(field, y0: torch.Tensor, t: torch.Tensor, lengths: torch.Tensor, method, cfg, stats, on_step=None):
    """Fixed-step solve on a per-sample grid: each sample steps its own span.

    Without ``step_size`` the steps are the row's own intervals; with it, sample ``b``
    takes ``ceil(span_b / step_size)`` steps of ``step_size`` in its own time, the last one
    shortened to end on its last time, and outputs in between are linear interpolants.
    Padded intervals have ``h = 0``: the sample's row is held, and no evaluation counts.
    """
    from ._integrate import Outcome

    B, T = t.shape
    dev = y0.device
    add_sample_stats(stats, B, dev)
    t64 = t.to(torch.float64)
    tdt = t.dtype
    rdt = y0.real.dtype
    t0 = t64[:, 0]
    t_end = t64.gather(1, (lengths - 1)[:, None])[:, 0]  # (B,)
    if cfg.step_size is None:
        if compiling():  # every interval of the rows (a shape, not a value); padding is held
            n, total = T - 1, None
        else:
            n, total = (int(v) for v in torch.stack([lengths.max() - 1, (lengths - 1).sum()]).tolist())
        if n > cfg.max_num_steps:
            return Outcome([y0], Status.MAX_STEPS, float(t0.min()), f"the grid has {n} steps but max_num_steps={cfg.max_num_steps}")
        y, f0 = y0, None
        outs = [y0]
        for i in range(n):
            ta, tb = t64[:, i], t64[:, i + 1]
            hb = tb - ta  # (B,) zero on padding
            live = hb != 0
            y, f0 = _masked_step(field, method, cfg, stats, on_step, y, f0, ta, tb, hb, live, tdt, rdt)
            if y is None:
                return _root_failure(outs, f0, i, ta, cfg)
            outs.append(y)
        outs.extend([y] * (T - 1 - n))
        stats.n_steps += n
        if total is not None:  # under torch.compile the total stays in stats.sample_accepted
            stats.n_accepted += total
        return Outcome(outs)
    step = cfg.step_size
    span = t_end - t0  # (B,) >= 0
    nb = torch.ceil(span / step - 1e-9).clamp(min=1).to(torch.long)  # (B,) steps per sample
    nb = torch.where(span > 0, nb, torch.zeros_like(nb))
    n, total = (int(v) for v in torch.stack([nb.max(), nb.sum()]).tolist())  # the plan's one sync, before any allocation
    if n > cfg.max_num_steps:
        return Outcome([y0], Status.MAX_STEPS, float(t0.min()), f"the grid has {n} steps but max_num_steps={cfg.max_num_steps}")
    y, f0 = y0, None
    states = [y0]
    for i in range(n):
        ta = torch.minimum(t0 + i * step, t_end)
        tb = torch.where(nb == i + 1, t_end, torch.minimum(t0 + (i + 1) * step, t_end))
        hb = (tb - ta).clamp(min=0)
        live = nb > i
        y, f0 = _masked_step(field, method, cfg, stats, on_step, y, f0, ta, tb, hb, live, tdt, rdt)
        if y is None:
            return _root_failure(states[:1], f0, i, ta, cfg)
        states.append(y)
    stats.n_steps += n
    stats.n_accepted += total
    Y = torch.stack(states)  # (n+1, B, ...)
    # output j of sample b lies in step k = floor((t - t0)/step), theta in [0, 1]; padded
    # outputs are the last time's (and so is their gradient with respect to t)
    pad = torch.arange(T, device=dev)[None, :] >= lengths[:, None]
    t64 = torch.where(pad, t_end[:, None], t64)
    rel = t64 - t0[:, None]  # (B, T)
    k = torch.floor(rel / step).to(torch.long)
    k = torch.minimum(torch.maximum(k, torch.zeros_like(k)), (nb - 1).clamp(min=0)[:, None])  # (B, T)
    kf = k.to(torch.float64)
    g0 = torch.minimum(t0[:, None] + kf * step, t_end[:, None])
    g1 = torch.where(k + 1 == nb[:, None], t_end[:, None], torch.minimum(t0[:, None] + (kf + 1) * step, t_end[:, None]))
    hk = g1 - g0
    theta = torch.where(hk > 0, (t64 - g0) / torch.where(hk > 0, hk, torch.ones_like(hk)), torch.zeros_like(hk))
    k1 = torch.where(nb[:, None] > 0, k + 1, k)
    bidx = torch.arange(B, device=dev)[:, None].expand(B, T)
    ya, yb = Y[k, bidx], Y[k1, bidx]  # (B, T, ...)
    w = theta.to(rdt).reshape(B, T, *([1] * (y0.ndim - 1)))
    out = ya + w * (yb - ya) if (ya.is_complex() or t.requires_grad) else torch.lerp(ya, yb, w)
    return Outcome(out.transpose(0, 1))  # (T, B, ...)
