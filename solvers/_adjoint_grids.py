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

from ._adjoint_rebuild import DEFAULT_REBUILD_TOL
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


def backward_batched(bw, ys: torch.Tensor, t_int: torch.Tensor, grad_ys: torch.Tensor, need_t: bool):
    """Gradients of a per-sample-grid solve: ``(dL/dy0, dL/dt or None, [dL/dp])``."""
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
    lengths = 1 + (tau[:, 1:] > tau[:, :-1]).sum(dim=1)  # (B,) padding repeats the last time
    g_t = torch.zeros(t_int.shape, dtype=t_int.dtype, device=t_int.device) if need_t else None
    extra_f = 0
    check = _RebuildCheck(bw, B, dev)
    with torch.no_grad():
        if need_t:
            for i in range(1, n):
                g_t[:, i] = _dot(func(t_user[:, i].to(t_int.dtype), ys[i]), grad_ys[i]).to(g_t.dtype)
                extra_f += 1
        # the backward grid of each sample: its own times reversed, s = -tau, padding (which
        # repeats the last time) folded into the start: backward index k is output
        # idx[b, k] = max(L_b - 1 - k, 0); the cotangents of the padded outputs add up at the start
        k = torch.arange(n, device=dev)
        idx = (lengths[:, None] - 1 - k[None, :]).clamp(min=0)  # (B, n)
        s_grid = -tau.gather(1, idx)  # (B, n) increasing, ending with repeats of -tau[:, 0]
        cols = torch.arange(B, device=dev)[None, :]
        y_store = ys[idx.T, cols]  # (n, B, ...) the stored state at backward index k
        g_store = grad_ys[idx.T, cols]
        pad = (k[:, None] >= (lengths - 1)[None, :])  # (n, B): the last time and its repeats
        a0 = torch.where(pad.reshape(*pad.shape, *([1] * (grad_ys.ndim - 2))), grad_ys, torch.zeros_like(grad_ys)).sum(dim=0)
        z0 = torch.stack([y_store[0], a0], dim=1)  # (B, 2, ...)
        field = VectorField(aug, z0, None, bstats, time_dtype=prob.field.time_dtype)
        cfg = _build_config(method, dict(opts), _aug_tol(bw.rtol, ys[0]), _aug_tol(bw.atol, ys[0]), None, False, z0)
        _check_batched_config(method, cfg, opts)
        cfg.reverse = not prob.reverse  # the loop runs in -tau: messages show the user's t
        cfg.norm = _seminorm
        if method.adaptive:
            def jump(z, landed, j):
                jj = j.clamp(min=0)[None, :, None].expand(1, B, y_store[0].reshape(B, -1).shape[1])
                y_st = y_store.reshape(n, B, -1).gather(0, jj)[0].reshape(y_store.shape[1:])
                g_st = g_store.reshape(n, B, -1).gather(0, jj)[0].reshape(y_store.shape[1:])
                check.add(z[:, 0], y_st, landed, s_grid.gather(1, j.clamp(min=0)[:, None])[:, 0])
                zj = torch.stack([y_st, z[:, 1] + g_st], dim=1)
                return torch.where(expand_b(landed, z), zj, z)

            with backward_errors("integrating every sample's grid backwards"):
                out = adaptive_batched(field, z0, s_grid, lengths, method, cfg, bstats, on_step=hook, jump=jump)
            _raise_failed(out, prob, bstats, extra_f, sign, s_grid, idx, t_user)
            a = out.ys[-1][:, 1]
        else:  # fixed steps: interval by interval (each sample's grid on its own interval)
            a = a0
            for kb in range(1, n):
                z0 = torch.stack([y_store[kb - 1], a], dim=1)
                s = s_grid[:, kb - 1 : kb + 1]
                live = 1 + (s[:, 1] > s[:, 0]).long()
                field = VectorField(aug, z0, None, bstats, time_dtype=prob.field.time_dtype)
                with backward_errors("integrating every sample's grid backwards"):
                    out = fixed_batched(field, z0, s, live, method, cfg, bstats, on_step=hook)
                _raise_failed(out, prob, bstats, extra_f, sign, s, idx[:, kb - 1 : kb + 1], t_user)
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
    check.finish(prob, sign)
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
        B = y_st.shape[0]
        ya = torch.abs(y_st).reshape(B, -1)
        scale = (self.atol + self.rtol * torch.abs(y_st)).reshape(B, -1)
        if ya.shape[1]:
            scale = torch.maximum(scale, torch.finfo(ya.dtype).eps * ya.amax(dim=1, keepdim=True))
            err = (torch.abs(y_reb - y_st).reshape(B, -1) / scale).amax(dim=1).to(torch.float64)
        else:
            err = torch.zeros(B, dtype=torch.float64, device=y_st.device)
        err = torch.nan_to_num(err, nan=math.inf, posinf=math.inf)
        worse = landed & (err > self.worst)
        self.worst = torch.where(worse, err, self.worst)
        self.at = torch.where(worse, s_at.to(torch.float64), self.at)

    def finish(self, prob, sign: float) -> None:
        bound = prob.gradient_options.get("rebuild_tol")
        bound = DEFAULT_REBUILD_TOL if bound is None else float(bound)
        err, b = (v.item() for v in self.worst.max(dim=0))
        prob.stats.adjoint_rebuild_error = max(prob.stats.adjoint_rebuild_error, err)
        if err > bound:
            t_at = float(sign * -self.at[b])
            raise AdjointRebuildError(
                f"{AdjointRebuildError.status.value} At t={t_at:.6g} the state of sample {b} rebuilt backwards is "
                f"{err:.3g} x the tolerance away from the stored forward state (bound rebuild_tol={bound:g}). "
                "On a per-sample `t` use gradient='checkpoint' or 'direct' (gradient='checkpointed_adjoint' runs on a "
                "shared 1-D `t` only).", t=t_at)


def _raise_failed(out, prob, bstats, extra_f, sign, s_grid, idx, t_user) -> None:
    """Raise the dedicated exception of a failed backward solve, naming the sample and interval."""
    if out.status.ok:
        return
    _record(prob.stats, bstats, extra_f)
    t_fail = None if out.t_fail is None else sign * -out.t_fail
    where = f" at t={t_fail:.6g}" if t_fail is not None else ""
    b = out.sample if out.sample is not None else 0
    msg = (
        f"{out.status.value} This happened in the backward (adjoint) pass{where}, integrating sample {b} "
        f"backwards from t={float(t_user[b, idx[b, 0]]):.6g} towards t={float(t_user[b, idx[b, -1]]):.6g}: {out.detail}. "
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
