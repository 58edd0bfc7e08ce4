"""The continuous adjoint on a per-sample time grid (``t`` of shape ``[B, T]``).

Backward runs output interval by output interval, ``t[:, i] -> t[:, i-1]`` for every
sample at once, as a per-sample-grid solve of the augmented state ``(y, a)`` (stacked on
dim 1, ``[B, 2, ...]``): each sample integrates its own interval with its own step sizes
and accept/reject decisions, and a padded interval (zero length) costs nothing.

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

from typing import Callable

import torch

from ._grids import batch_rms_norm, expand_b
from ._problem import VectorField, with_time_dtype
from ._solution import Stats, exception_for

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
                if j == 0:  # f0 may stem from different steps per sample: evaluate it again
                    yv = res.y0[:, 0].detach()
                    gy = aug.g(-res.ts[0], yv)
                    a = res.y0[:, 1]
                    self.stats.n_f_evals += 1
                else:
                    rec = aug.stash.get(id(res.ks[j]))
                    if rec is None:
                        continue
                    gy, a = rec
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
    from ._grids import fixed_batched
    from ._grids_adaptive import adaptive_batched
    from ._registry import get_method

    prob = bw.prob
    params = bw.params
    n = ys.shape[0]
    dtype = prob.y0.dtype
    sign = -1.0 if prob.reverse else 1.0
    func = with_time_dtype(prob.func, prob.field.time_dtype)
    t_user = (sign * t_int.detach())[:, :n]  # (B, n) the user's times

    def g(tau, y):  # the field in forward-oriented time tau
        if prob.reverse:
            return -func(-tau, y)
        return func(tau, y)

    method = bw.method
    if isinstance(method, str):
        method = get_method(method)()
    opts = {k: v for k, v in bw.options.items() if k != "norm"}
    aug = _AugField(g, params)
    bstats = Stats()
    acc = [torch.zeros(p.shape, dtype=dtype, device=prob.y0.device) for p in params]
    hook = _ParamQuadrature(aug, method, params, acc, bstats)
    grad_ys = grad_ys.to(dtype)
    a = grad_ys[n - 1]
    g_t = torch.zeros(t_int.shape, dtype=t_int.dtype, device=t_int.device) if need_t else None
    tau = t_int.detach()
    extra_f = 0
    h_carry = None  # adaptive: each interval starts from the step sizes the last one ended with
    with torch.no_grad():
        for i in range(n - 1, 0, -1):
            if need_t:
                g_t[:, i] = _dot(func(t_user[:, i].to(t_int.dtype), ys[i]), grad_ys[i]).to(g_t.dtype)
                extra_f += 1
            z0 = torch.stack([ys[i], a], dim=1)  # (B, 2, ...)
            s = torch.stack([-tau[:, i], -tau[:, i - 1]], dim=1)  # (B, 2) increasing
            field = VectorField(aug, z0, None, bstats, time_dtype=prob.field.time_dtype)
            cfg = _build_config(method, dict(opts), _aug_tol(bw.rtol, ys[i]), _aug_tol(bw.atol, ys[i]), None, False, z0)
            _check_batched_config(method, cfg, opts)
            cfg.reverse = not prob.reverse  # the loop runs in -tau: messages show the user's t
            cfg.norm = _seminorm
            lengths = 1 + (s[:, 1] > s[:, 0]).long()
            with backward_errors(f"integrating from t={float(t_user[0, i]):.6g} to t={float(t_user[0, i - 1]):.6g} (sample 0's times)"):
                if method.adaptive:
                    out = adaptive_batched(field, z0, s, lengths, method, cfg, bstats, on_step=hook, h_init=h_carry if cfg.first_step is None else None)
                    h_carry = out.h_next
                else:
                    out = fixed_batched(field, z0, s, lengths, method, cfg, bstats, on_step=hook)
            ys_b = out.ys if isinstance(out.ys, torch.Tensor) else torch.stack(out.ys)
            if not out.status.ok:
                _record(prob.stats, bstats, extra_f)
                t_fail = None if out.t_fail is None else sign * -out.t_fail
                where = f" at t={t_fail:.6g}" if t_fail is not None else ""
                b = out.sample if out.sample is not None else 0
                msg = (
                    f"{out.status.value} This happened in the backward (adjoint) pass{where}, integrating sample {b} "
                    f"from t={float(t_user[b, i]):.6g} to t={float(t_user[b, i - 1]):.6g}: {out.detail}. "
                    "Try other `adjoint_rtol`/`adjoint_atol`, `adjoint_options` or `adjoint_method`."
                )
                raise exception_for(out.status)(msg, t=t_fail)
            a = ys_b[-1][:, 1] + grad_ys[i - 1]
        if need_t:
            g_t[:, 0] = -_dot(func(t_user[:, 0].to(t_int.dtype), ys[0]), a - grad_ys[0]).to(g_t.dtype)
            extra_f += 1
            if prob.reverse:
                g_t = -g_t
            # padding repeats the last time: its outputs are that time's, and so is its gradient
            lengths = 1 + (tau[:, 1:] > tau[:, :-1]).sum(dim=1)  # (B,)
            pad = torch.arange(g_t.shape[1], device=g_t.device)[None, :] >= lengths[:, None]
            moved = torch.where(pad, g_t, torch.zeros_like(g_t)).sum(dim=1)
            g_t = torch.where(pad, torch.zeros_like(g_t), g_t)
            g_t.scatter_add_(1, (lengths - 1)[:, None], moved[:, None])
    _record(prob.stats, bstats, extra_f)
    return a, g_t, [gp.to(p.dtype) for gp, p in zip(acc, params)]


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
