"""The continuous adjoint on a per-sample time grid (``t`` of shape ``[B, T]``).

Backward is one per-sample-grid solve of the augmented state ``(y, a)`` (stacked on dim 1,
``[B, 2, ...]``) over each sample's own times reversed, with every output time a stop
(``adaptive_batched(..., jump=...)``): each sample's steps land on its next output time,
where its adjoint gains ``dL/dy(t_i)`` and its state restarts from the stored forward
state, while the other samples go on stepping. Every sample has its own step sizes and
accept/reject decisions across the whole backward pass, so the batch takes as many batched
steps as its slowest sample (an interval-by-interval pass in lockstep took the sum over
intervals of the slowest sample there: 43 batched steps against 26 on
``bench_batched_grids``). Padding (repeats of the last time) costs nothing: its cotangents
add up at the start. Fixed-step backward methods run interval by interval.

At every stop the rebuilt state is compared with the stored one, per sample, in units of
the forward tolerance (:mod:`solvers._adjoint_rebuild`); the largest mismatch is read once
at the end, recorded as ``Stats.adjoint_rebuild_error`` and, beyond ``rebuild_tol``, raised
as :class:`solvers.AdjointRebuildError` naming the sample and its time.

The parameter adjoint ``a_p = int a^T df/dp`` is shared by all samples, but they take
different steps, so it is not carried in the state. It is accumulated as the Runge–Kutta
quadrature of the stages instead: after each batched step, ``sum_j b_j h_b a_j^T df/dp``
over the samples that accepted, in one VJP through the stages' retained graphs (stage 0
is re-evaluated, since it may come from different earlier steps for different samples).
This is exactly what integrating ``a_p`` in the state would give with the error norm
leaving it out (torchdiffeq's ``seminorm``), and it needs an explicit Runge–Kutta method
for the backward solve.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ._adjoint_rebuild import DEFAULT_REBUILD_TOL, scaled_mismatch
from ._grids import batch_rms_norm, expand_b, fixed_batched
from ._grids_adaptive import adaptive_batched
from ._problem import VectorField, with_time_dtype
from ._solution import AdjointRebuildError, Stats, exception_for

__all__ = ["check_batched_backward", "backward_batched"]


def check_batched_backward(bw) -> None:
    """Refuse, at the forward call, backward settings a per-sample grid cannot run."""
    method = bw.method
    if isinstance(method, str):
        from ._registry import get_method

        method = get_method(method)
    if getattr(method, "implicit", False) or getattr(method, "_b", None) is None:
        name = getattr(method, "name", method)
        raise ValueError(
            f"adjoint_method {name!r} cannot run the adjoint on a per-sample `t`: the parameter adjoint is "
            "accumulated from explicit Runge–Kutta stages; pass an explicit method such as adjoint_method='dopri5'"
        )
    norm = bw.options.get("norm")
    if norm not in (None, "seminorm"):
        raise ValueError("on a per-sample `t` the adjoint's error norm is the per-sample seminorm over (y, a); remove adjoint option `norm`")


class _AugField:
    """``(s, z=[y, a]) -> (-g, a^T dg/dy)`` in reversed time ``s = -tau``; stage graphs kept."""

    def __init__(self, g: Callable, params: tuple):
        self.g, self.params = g, params
        self.stash = {}

    def __call__(self, s, z):
        y, a = z[:, 0], z[:, 1]
        with torch.enable_grad():
            yv = y.detach().requires_grad_(True)
            gy = self.g(-s, yv)
            if gy.requires_grad:
                (vy,) = torch.autograd.grad(gy, (yv,), a, retain_graph=bool(self.params), allow_unused=True)
            else:
                vy = None
        vy = torch.zeros_like(y) if vy is None else vy
        out = torch.stack([-gy.detach(), vy], dim=1)
        if self.params and gy.requires_grad:
            self.stash[id(out)] = (gy, a)
        return out


class _ParamQuadrature:
    """``on_step`` hook: adds ``sum_j b_j h_b a_j^T dg/dp`` of the accepted samples."""

    def __init__(self, aug: _AugField, method, params: tuple, acc: list, stats: Stats):
        self.aug, self.params, self.acc, self.stats = aug, params, acc, stats
        self.terms = method._b

    def __call__(self, res, accepted, hstep):
        aug = self.aug
        if not self.params:
            return
        w = (hstep.detach() * accepted).to(res.y0.real.dtype)  # (B,)
        outs, cots = [], []
        with torch.enable_grad():
            for j, c in self.terms:
                rec = aug.stash.get(id(res.ks[j]))
                if rec is not None:
                    gy, a = rec
                elif j == 0:  # an f0 reused from an earlier step (FSAL; per sample a different one): evaluate it again
                    yv = res.y0[:, 0].detach()
                    gy = aug.g(-res.ts[0], yv)
                    a = res.y0[:, 1]
                    self.stats.n_f_evals += 1
                else:
                    continue
                if not gy.requires_grad:
                    continue
                outs.append(gy)
                cots.append(a * expand_b(w * c, a))
            if outs:
                grads = torch.autograd.grad(outs, self.params, cots, allow_unused=True)
                for k, gk in enumerate(grads):
                    if gk is not None:
                        self.acc[k] = self.acc[k] + gk.to(self.acc[k].dtype)
        aug.stash.clear()


def backward_batched(bw, ys: torch.Tensor, t_int: torch.Tensor, grad_ys: torch.Tensor, need_t: bool, steps=None, record_only: bool = False):
    """Gradients of a per-sample-grid solve: ``(dL/dy0, dL/dt or None, [dL/dp])``.

    ``steps``: the accepted forward steps ``(t1 [K, B], accepted [K, B], y1 [K, B, ...])``
    (the checkpointed adjoint): their ends become stops too, where the state restarts from
    the stored one. ``record_only``: the rebuilt-state mismatch is a stat, never raised.
    """
    from ._adjoint import backward_errors
    from ._api import _build_config, _check_batched_config
    from ._registry import get_method

    prob = bw.prob
    params = bw.params
    n = ys.shape[0]
    B = ys.shape[1]
    dtype = prob.y0.dtype
    dev = prob.y0.device
    sign = -1.0 if prob.reverse else 1.0
    func = with_time_dtype(prob.func, prob.field.time_dtype)
    tau = t_int.detach()[:, :n]  # (B, n) increasing: the loop's forward-oriented time
    t_user = sign * tau  # the user's times

    def g(tau_, y):  # the field in forward-oriented time tau
        if prob.reverse:
            return -func(-tau_, y)
        return func(tau_, y)

    method = bw.method
    if isinstance(method, str):
        method = get_method(method)()
    opts = {k: v for k, v in bw.options.items() if k != "norm"}
    aug = _AugField(g, params)
    bstats = Stats()
    acc = [torch.zeros(p.shape, dtype=dtype, device=dev) for p in params]
    hook = _ParamQuadrature(aug, method, params, acc, bstats)
    grad_ys = grad_ys.to(dtype)
    lengths = 1 + (tau[:, 1:] > tau[:, :-1]).sum(dim=1)  # (B,) outputs per sample (padding repeats the last time)
    g_t = torch.zeros(t_int.shape, dtype=t_int.dtype, device=t_int.device) if need_t else None
    extra_f = 0
    check = _RebuildCheck(bw, B, dev)
    with torch.no_grad():
        if need_t:
            for i in range(1, n):
                g_t[:, i] = _dot(func(t_user[:, i].to(t_int.dtype), ys[i]), grad_ys[i]).to(g_t.dtype)
                extra_f += 1
        # the backward grid of each sample: its stops (its own output times, and with `steps`
        # its accepted forward steps' ends) reversed, s = -tau: backward index k is stop
        # idx[b, k] = max(L_b - 1 - k, 0); repeated times (padding) are one stop, their
        # cotangents added up
        u, y_stops, g_stops, n_stops = _stops(tau, ys, grad_ys, steps)
        M = u.shape[1]
        k = torch.arange(M, device=dev)
        idx = (n_stops[:, None] - 1 - k[None, :]).clamp(min=0)  # (B, M)
        s_grid = -u.gather(1, idx)  # (B, M) increasing, ending with repeats of -tau[:, 0]
        cols = torch.arange(B, device=dev)[None, :]
        y_store = y_stops[idx.T, cols]  # (M, B, ...) the stored state at backward index k
        g_store = g_stops[idx.T, cols]
        a0 = g_store[0]
        z0 = torch.stack([y_store[0], a0], dim=1)  # (B, 2, ...)
        field = VectorField(aug, z0, None, bstats, time_dtype=prob.field.time_dtype)
        cfg = _build_config(method, dict(opts), _aug_tol(bw.rtol, ys[0]), _aug_tol(bw.atol, ys[0]), None, False, z0)
        _check_batched_config(method, cfg, opts)
        cfg.reverse = not prob.reverse  # the loop runs in -tau: messages show the user's t
        cfg.norm = _seminorm
        if method.adaptive:
            rows = cols[0]

            def jump(z, landed, j):
                j = j.clamp(min=0)  # (B,) the stop each sample reached (meaningful where landed)
                y_st, g_st = y_store[j, rows], g_store[j, rows]
                check.add(z[:, 0], y_st, landed, s_grid[rows, j])
                zj = torch.stack([y_st, z[:, 1] + g_st], dim=1)
                return torch.where(expand_b(landed, z), zj, z)

            with backward_errors("integrating every sample's grid backwards"):
                out = adaptive_batched(field, z0, s_grid, n_stops, method, cfg, bstats, on_step=hook, jump=jump)
            _raise_failed(out, prob, bstats, extra_f, t_user, lengths)
            a = out.ys[-1][:, 1]
        else:  # fixed steps: interval by interval (each sample's grid on its own interval)
            a = a0
            for kb in range(1, M):
                z0 = torch.stack([y_store[kb - 1], a], dim=1)
                s = s_grid[:, kb - 1 : kb + 1]
                live = 1 + (s[:, 1] > s[:, 0]).long()
                field = VectorField(aug, z0, None, bstats, time_dtype=prob.field.time_dtype)
                with backward_errors("integrating every sample's grid backwards"):
                    out = fixed_batched(field, z0, s, live, method, cfg, bstats, on_step=hook)
                _raise_failed(out, prob, bstats, extra_f, t_user, lengths)
                zend = (out.ys if isinstance(out.ys, torch.Tensor) else torch.stack(out.ys))[-1]
                landed = live > 1
                check.add(zend[:, 0], y_store[kb], landed, s[:, 1])
                a = torch.where(expand_b(landed, a), zend[:, 1] + g_store[kb], a)
        if need_t:
            g_t[:, 0] = -_dot(func(t_user[:, 0].to(t_int.dtype), ys[0]), a - grad_ys[0]).to(g_t.dtype)
            extra_f += 1
            if prob.reverse:
                g_t = -g_t
            # padding repeats the last time: its outputs are that time's, and so is its gradient
            padt = torch.arange(g_t.shape[1], device=g_t.device)[None, :] >= lengths[:, None]
            moved = torch.where(padt, g_t, torch.zeros_like(g_t)).sum(dim=1)
            g_t = torch.where(padt, torch.zeros_like(g_t), g_t)
            g_t.scatter_add_(1, (lengths - 1)[:, None], moved[:, None])
    _record(prob.stats, bstats, extra_f)
    check.finish(prob, sign, record_only)
    return a, g_t, [gp.to(p.dtype) for gp, p in zip(acc, params)]


class _RebuildCheck:
    """The rebuilt-state check per sample: the largest mismatch (in tolerance units, as
    :func:`solvers._adjoint_rebuild.rebuild_error`) of each sample's rebuilt state with
    its stored forward states, kept on the device and read once at the end."""

    def __init__(self, bw, B: int, dev):
        self.rtol, self.atol = bw.rtol, bw.atol
        self.worst = torch.zeros(B, dtype=torch.float64, device=dev)
        self.at = torch.zeros(B, dtype=torch.float64, device=dev)

    def add(self, y_reb: torch.Tensor, y_st: torch.Tensor, landed: torch.Tensor, s_at: torch.Tensor) -> None:
        err = scaled_mismatch(y_reb, y_st, self.rtol, self.atol, rows=True)
        worse = landed & (err > self.worst)
        self.worst = torch.where(worse, err, self.worst)
        self.at = torch.where(worse, s_at.to(torch.float64), self.at)

    def finish(self, prob, sign: float, record_only: bool = False) -> None:
        bound = math.inf if record_only else prob.gradient_options.get("rebuild_tol")
        bound = DEFAULT_REBUILD_TOL if bound is None else float(bound)
        err, b = (v.item() for v in self.worst.max(dim=0))
        prob.stats.adjoint_rebuild_error = max(prob.stats.adjoint_rebuild_error, err)
        if err > bound:
            t_at = float(sign * -self.at[b])
            raise AdjointRebuildError(
                f"{AdjointRebuildError.status.value} At t={t_at:.6g} the state of sample {b} rebuilt backwards is "
                f"{err:.3g} x the tolerance away from the stored forward state (bound rebuild_tol={bound:g}). "
                "On a per-sample `t` all three fixes run.", t=t_at)


def _stops(tau: torch.Tensor, ys: torch.Tensor, grad_ys: torch.Tensor, steps=None):
    """Each sample's stops of the backward pass, in increasing loop time.

    The output times ``tau`` ``[B, n]`` (with states ``ys`` and cotangents ``grad_ys``
    ``[n, B, ...]``) and, when given, the accepted forward steps' ends (cotangent zero), merged
    per sample and sorted; equal times are one stop (the first one's state: an output at a
    step's end is that step's state), their cotangents summed. Returns ``(u [B, M], y [M, B,
    ...], g [M, B, ...], L [B])``: sample ``b``'s ``L_b`` stops first, then repeats of its last.
    No host synchronisation.
    """
    B, n = tau.shape
    times, states, cots = tau.to(torch.float64), ys, grad_ys
    if steps is not None:
        t1, acc, y1 = steps
        times = torch.cat([times, torch.where(acc, t1.to(torch.float64), math.inf).T], dim=1)
        states = torch.cat([ys, y1.to(ys.dtype)], dim=0)
        cots = torch.cat([grad_ys, torch.zeros_like(y1, dtype=grad_ys.dtype)], dim=0)
    M = times.shape[1]
    order = torch.sort(times, dim=1, stable=True).indices  # outputs first among equal times
    ts = times.gather(1, order)
    first = torch.ones_like(ts, dtype=torch.bool)
    first[:, 1:] = ts[:, 1:] != ts[:, :-1]
    gid = torch.cumsum(first.long(), dim=1) - 1  # (B, M) each entry's stop
    cols = torch.arange(B, device=tau.device)[None, :]
    st = states[order.T, cols]  # (M, B, ...) in sorted order
    ct = cots[order.T, cols]
    dest = torch.where(first, gid, M)  # the first entry of a stop gives its time and state; the others go to a scratch row
    u = torch.full((B, M + 1), math.inf, dtype=torch.float64, device=tau.device).scatter(1, dest, ts)[:, :M]
    y = torch.zeros((M + 1, *states.shape[1:]), dtype=states.dtype, device=states.device).index_put((dest.T, cols.expand(M, B)), st)[:M]
    g = torch.zeros((M, *cots.shape[1:]), dtype=cots.dtype, device=cots.device).index_put((gid.T, cols.expand(M, B)), ct, accumulate=True)
    L = torch.isfinite(u).sum(dim=1)  # (B,) >= 1: t[:, 0] is finite
    pad = torch.arange(M, device=tau.device)[None, :] >= L[:, None]
    u = torch.where(pad, u.gather(1, (L - 1)[:, None]), u)
    return u, y, g, L


def _raise_failed(out, prob, bstats, extra_f, t_user, lengths) -> None:
    """Raise the dedicated exception of a failed backward solve, naming the sample and its span."""
    if out.status.ok:
        return
    _record(prob.stats, bstats, extra_f)
    sign = -1.0 if prob.reverse else 1.0
    t_fail = None if out.t_fail is None else sign * -out.t_fail
    where = f" at t={t_fail:.6g}" if t_fail is not None else ""
    b = out.sample if out.sample is not None else 0
    msg = (
        f"{out.status.value} This happened in the backward (adjoint) pass{where}, integrating sample {b} "
        f"backwards from t={float(t_user[b, int(lengths[b]) - 1]):.6g} towards t={float(t_user[b, 0]):.6g}: {out.detail}. "
        "Try other `adjoint_rtol`/`adjoint_atol`, `adjoint_options` or `adjoint_method`."
    )
    raise exception_for(out.status)(msg, t=t_fail)


def _seminorm(x: torch.Tensor) -> torch.Tensor:
    """Per-sample max of the RMS of ``y`` and of ``a`` (``x`` is ``[B, 2, ...]``)."""
    return torch.maximum(batch_rms_norm(x[:, 0]), batch_rms_norm(x[:, 1]))


_seminorm.per_sample = True


def _aug_tol(tol, y0: torch.Tensor):
    """A per-component tolerance of the state, repeated for ``a`` (``[B, 2, ...]``)."""
    if isinstance(tol, torch.Tensor):
        return tol.expand(y0.shape).unsqueeze(1)
    return tol


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).reshape(u.shape[0], -1).sum(dim=1)


def _record(stats, bstats, extra_f: int) -> None:
    stats.n_f_evals_backward += bstats.n_f_evals + extra_f
    stats.n_vjp_evals += bstats.n_f_evals
    stats.n_steps_backward += bstats.n_steps
    stats.n_rejected_backward += bstats.n_rejected
    bstats.n_f_evals = bstats.n_steps = bstats.n_rejected = 0
