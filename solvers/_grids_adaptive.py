"""The adaptive loop on a per-sample time grid (``t`` of shape ``[B, T]``).

Every sample has its own time, step size, controller state and accept/reject decision
(``[B]`` tensors). All samples are stepped together by one batched call of the method; a
finished sample is masked (step size zero, state held) and its counters stop. The one
host synchronisation per step reads three numbers together: how many samples are still
running, the largest number of outputs any sample passed in this step (the width of the
dense-output window) and a failure code.

Outputs are written once at the end with one ``index_put``, so the loop keeps no
``[T, B, ...]`` buffer in place and direct backpropagation works through it.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ._base import StepResult, describe_info
from ._grids import add_sample_stats, batch_norm_of, batch_rms_norm, expand_b
from ._solution import NonFiniteStateError, Status

__all__ = ["adaptive_batched", "interpolate_batched"]

_CODES = {1: Status.STEP_SIZE_UNDERFLOW, 2: Status.NON_FINITE, 3: Status.MAX_STEPS, 4: Status.ROOT_FINDER}


def _per_sample_norm(cfg) -> Callable:
    from ._integrate import rms_norm

    if getattr(cfg.norm, "per_sample", False):  # already maps [B, ...] -> [B]
        return cfg.norm
    return batch_rms_norm if cfg.norm in (None, rms_norm) else batch_norm_of(cfg.norm)


def interpolate_batched(method, res, theta: torch.Tensor, hstep: torch.Tensor, f1: torch.Tensor, extra: Optional[Callable] = None) -> torch.Tensor:
    """Dense output of one batched step at per-sample fractions ``theta`` ``[B, K]``.

    Uses the method's own interpolant when its tableau has one (``b_dense``), else cubic
    Hermite from ``y0, f0, y1, f1``. Returns ``[K, B, ...]``.
    """
    y0 = res.y0
    B = y0.shape[0]
    rdt = y0.real.dtype
    th = theta.to(rdt)  # (B, K)
    tab = getattr(method, "tableau", None)
    if tab is not None and tab.b_dense is not None:
        ks = list(res.ks)
        if tab.a_extra is not None:
            ks = extra(ks)
        bd = _dense_matrix(method, rdt, y0.device)  # (s, p)
        powers = torch.arange(1, bd.shape[1] + 1, device=y0.device, dtype=rdt)
        w = ((th[..., None] ** powers) @ bd.T) * hstep.to(rdt)[:, None, None]  # (B, K, s), the step size folded in
        kmat = torch.stack(ks, dim=1).reshape(B, len(ks), -1)  # (B, s, N)
        if kmat.is_complex():
            w = w.to(kmat.dtype)
        out = torch.baddbmm(y0.reshape(B, 1, -1), w, kmat).transpose(0, 1)  # y0 + h * w @ k: (K, B, N)
    else:
        th2 = th * th
        th3 = th2 * th
        w = torch.stack([2 * th3 - 3 * th2 + 1, th3 - 2 * th2 + th, -2 * th3 + 3 * th2, th3 - th2], dim=-1)  # (B, K, 4)
        h = hstep.to(rdt).reshape(B, 1)
        basis = torch.stack([y0.reshape(B, -1), res.f0.reshape(B, -1) * h, res.y1.reshape(B, -1), f1.reshape(B, -1) * h])  # (4, B, N)
        if basis.is_complex():
            w = w.to(basis.dtype)
        out = torch.einsum("bkq,qbn->kbn", w, basis)
    return out.reshape(theta.shape[1], *y0.shape)


def _dense_matrix(method, dtype, device) -> torch.Tensor:
    from ._explicit import _cached_dense

    return _cached_dense(method, device, dtype)


def _initial_step(field, t0, tdt, y0, f0, span, order, rtol, atol, norm, stats, live):
    """Hairer's starting step per sample (Hairer, Nørsett & Wanner I, II.4)."""
    with torch.no_grad():
        scale = atol + torch.abs(y0) * rtol
        d0 = norm(y0 / scale).to(torch.float64)
        d1 = norm(f0 / scale).to(torch.float64)
        bad = torch.stack([(~torch.isfinite(d0) & live).any(), (~torch.isfinite(d1) & live).any()]).tolist()
        if bad[0]:
            from ._problem import nonfinite_y0

            if not bool(torch.isfinite(y0).all()):
                raise nonfinite_y0()
            raise ValueError("the error norm returned a non-finite value for a finite initial state; a custom `norm` option must return finite, non-negative values for finite input")
        if bad[1]:
            raise NonFiniteStateError("the vector field is non-finite at the initial time of some sample (finite y0)")
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = torch.where(small, 1e-6, 0.01 * d0 / torch.where(small, 1.0, d1))
        h0 = torch.minimum(h0, span)
        y1 = y0 + expand_b(h0.to(y0.real.dtype), y0) * f0
        f1 = field((t0 + h0).to(tdt), y1)
        stats.n_initial_step_evals += 1
        stats.sample_f_evals += live
        pos = h0 > 0
        d2 = norm((f1 - f0) / scale).to(torch.float64) / torch.where(pos, h0, 1.0)
        d2 = torch.where(pos, d2, 0.0)
        dm = torch.maximum(d1, d2)
        tiny = dm <= 1e-15
        h1 = torch.where(tiny, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / torch.where(tiny, 1.0, dm)) ** (1.0 / (order + 1)))
        return torch.minimum(torch.minimum(100 * h0, h1), span)


def adaptive_batched(field, y0: torch.Tensor, t: torch.Tensor, lengths: torch.Tensor, method, cfg, stats, on_step: Optional[Callable] = None, h_init: Optional[torch.Tensor] = None,
                     jump: Optional[Callable] = None):
    """Adaptive solve on a per-sample grid; see the module docstring.

    ``on_step(res, accepted, hstep)``, when given, is called after every batched step
    (the continuous adjoint accumulates its parameter integral there). ``h_init`` ``[B]``:
    the first step sizes (estimated only for running samples whose ``h_init`` is 0); the
    returned outcome's ``h_next`` holds each sample's next step size (before any clip to
    land on its end), so a caller that solves interval after interval can carry them on.

    ``jump(y, landed, j) -> y``, when given, makes every output time a stop: each sample's
    steps land on its next time ``t[b, j]`` instead of passing it, and after a step that
    landed the state of those samples (``landed`` ``[B]``, ``j`` ``[B]`` the time index
    reached) is replaced by what ``jump`` returns (the continuous adjoint's backward pass
    adds ``dL/dy(t_j)`` there and restarts from the stored state). The derivative is then
    evaluated afresh at every step (no FSAL reuse across a jump), no outputs are
    interpolated, and the outcome's ``ys`` is ``[1, B, ...]``: the final state.
    """
    from ._integrate import Outcome

    B, T = t.shape
    dev, tdt = y0.device, t.dtype
    rdt = y0.real.dtype
    add_sample_stats(stats, B, dev)
    norm = _per_sample_norm(cfg)
    rtol, atol = cfg.rtol, cfg.atol
    ctrl = cfg.controller
    order = min(method.order, method.error_order)
    ctrl.reset(order)
    cstate = ctrl.init_batch(B, dev)
    c_col = torch.tensor(method.stage_c, dtype=torch.float64, device=dev)[:, None]  # (s, 1)
    t64 = t.to(torch.float64)  # (B, T), carries the graph when t requires grad
    t64d = t64.detach().contiguous()
    t0 = t64[:, 0]
    last = (lengths - 1)[:, None]
    t_end = t64.gather(1, last)[:, 0]  # (B,)
    t_end_d = t_end.detach()
    span = t_end_d - t0.detach()
    done = lengths == 1
    live0 = ~done
    arangeT = torch.arange(T, device=dev)

    # outputs (row J, sample b, value): J = T is a scratch row for unused window slots
    if jump is None:  # (with stops no outputs are kept)
        J0 = torch.where((arangeT[None, :] == 0) | done[:, None], arangeT[None, :], torch.full_like(arangeT[None, :], T))  # (B, T)
        entries_j = [J0.T.reshape(-1)]
        entries_v = [y0.unsqueeze(0).expand(T, *y0.shape).reshape(T * B, *y0.shape[1:])]
    j_next = torch.where(done, torch.full_like(lengths, T), torch.ones_like(lengths))

    f0 = field(t[:, 0], y0)
    stats.sample_f_evals += live0
    if h_init is not None:
        h = h_init.to(dtype=torch.float64, device=dev)
        if bool(((h <= 0) & live0).any()):  # a running sample with no step to carry (its span so far was empty)
            h = torch.where(h > 0, h, _initial_step(field, t0.detach(), tdt, y0, f0, span, order, rtol, atol, norm, stats, live0))
    elif cfg.first_step is not None:
        h = torch.full((B,), float(cfg.first_step), dtype=torch.float64, device=dev)
    else:
        h = _initial_step(field, t0.detach(), tdt, y0, f0, span, order, rtol, atol, norm, stats, live0)
    h = h.clamp(min=cfg.min_step, max=cfg.max_step)
    tn = t0
    y = y0
    cstep = None
    if cfg.compile_step is not None and not t64.requires_grad:  # (times that carry gradients: the eager step)
        from ._compiled_step import compiled_step, traced_norm

        tnorm = traced_norm(cfg.norm, per_sample=True)
        cstep = compiled_step(method, field, tnorm, cfg.compile_step)
    n_steps = torch.zeros(B, dtype=torch.long, device=dev)
    code, failed_at, root_info = 0, None, None
    while True:
        tn_d = tn.detach()
        if jump is None:
            target, target_d = t_end, t_end_d
        else:  # the next stop: the sample's next output time
            target = target_d = t64d.gather(1, j_next.clamp(max=T - 1)[:, None])[:, 0]
        land = tn_d + h >= target_d
        t1 = torch.where(land, target, tn + h)
        t1 = torch.where(done, tn, t1)
        hstep = t1 - tn  # (B,), zero for finished samples
        hstep_d = hstep.detach()
        e0 = stats.n_f_evals
        if cstep is not None:
            hb = expand_b(hstep.to(rdt), y)
            y1c, f1c, ksc, r, ts = cstep(tn + c_col * hstep, y, hb, f0, rtol, atol)
            res = StepResult(y, y1c, f0, f1c, None, list(ksc), hb, ts, func=field)
        else:
            ts = (tn + c_col * hstep).to(tdt).unbind(0)  # (s, B): every stage time in one broadcast, as tn + c * hstep
            res = method.step(field, ts, y, expand_b(hstep.to(rdt), y), f0)
        running = ~done
        with torch.no_grad():
            if cstep is not None:
                ratio = (r.detach() if tnorm is not None else norm(r.detach())).to(torch.float64)
                ratio = torch.nan_to_num(ratio, nan=math.inf, posinf=math.inf, neginf=math.inf)
            elif res.ok:
                y1d = res.y1.detach()
                yd = y.detach()
                scale = atol + rtol * torch.maximum(torch.abs(yd), torch.abs(y1d))
                ratio = method.error_ratio(res, scale, norm) if _has_batch_ratio(method) else norm(res.error.detach() / scale)
                ratio = ratio.to(torch.float64)
                ratio = torch.nan_to_num(ratio, nan=math.inf, posinf=math.inf, neginf=math.inf)  # non-finite -> inf
            else:  # an implicit stage did not converge: the step is rejected for every sample
                ratio = torch.full((B,), math.inf, dtype=torch.float64, device=dev)
                root_info = res.info
            accepted = running & (ratio <= 1.0)
            rejected = running & ~accepted
        n_steps += running
        stats.n_steps += 1
        stats.sample_f_evals += (stats.n_f_evals - e0) * running
        stats.sample_accepted += accepted
        stats.sample_rejected += rejected
        if res.f1 is not None or jump is not None:  # (with stops the next f0 is evaluated below)
            f1 = res.f1
        else:  # non-FSAL: the next step's f0 at the new point (needed for Hermite output too)
            f1 = field(t1.to(tdt), res.y1)
            with torch.no_grad():  # counted where a solve of its own would need it
                inner = torch.searchsorted(t64d, t1.detach()[:, None].contiguous())[:, 0] > j_next
                stats.sample_f_evals += accepted & (~land | inner)
        if on_step is not None:
            on_step(res, accepted, hstep)
        if cfg.on_batch_step is not None:
            cfg.on_batch_step(res, accepted, tn, t1, f1)
        acc_b = expand_b(accepted, y)
        y_new = torch.where(acc_b, res.y1, y)
        if jump is None:
            f0 = torch.where(acc_b, f1, f0)
        with torch.no_grad():
            t1_d = t1.detach()
            reach = torch.searchsorted(t64d, t1_d[:, None].contiguous(), right=True)[:, 0]  # outputs <= t1
            cnt = torch.where(accepted, (reach - j_next).clamp(min=0), 0)
            if jump is None:
                new_done = done | (accepted & land)
            else:  # with stops a step reaches at most its own end's time: done after the last one
                new_done = done | (accepted & land & (j_next + cnt >= lengths))
            h_new = ctrl.propose_batch(hstep_d, ratio, accepted, cstate)
            stuck = None
            if cfg.min_step > 0:  # (a proposal is never negative: with min_step 0 nothing is low)
                low = h_new < cfg.min_step
                stuck = rejected & low & (hstep_d <= cfg.min_step)
                h_new = torch.where(low, cfg.min_step, h_new)
            tnn = torch.where(accepted, t1_d, tn_d)
            live = ~new_done
            under = (rejected & ((tnn + h_new == tnn) | (h_new >= hstep_d))) | (running & live & (hstep_d <= 0))
            if stuck is not None:
                under = under | stuck
            nonfin = under & (ratio == math.inf)  # (non-finite ratios are inf by now)
            codes = torch.where(nonfin, 4 if not res.ok else 2, under.to(torch.long))
            if stats.n_steps >= cfg.max_num_steps:  # no sample has taken more steps than the batch
                codes = torch.where(live & (n_steps >= cfg.max_num_steps), 3, codes)
            n_run, k_max, code = torch.stack([live.sum(), cnt.max(), codes.max()]).tolist()  # the one sync
        if jump is not None:
            j_next = j_next + cnt
            y_new = jump(y_new, cnt > 0, j_next - 1)
            if n_run and not code:  # afresh for the next step: the state may have jumped
                f0 = field(torch.where(accepted, t1, tn).to(tdt), y_new)
                stats.sample_f_evals += ~new_done
        elif k_max > 0:
            kk = torch.arange(k_max, device=dev)
            jj = j_next[:, None] + kk  # (B, K)
            valid = kk[None, :] < cnt[:, None]
            jc = jj.clamp(max=T - 1)
            tq = t64.gather(1, jc)  # (B, K)
            safe_h = torch.where(hstep_d > 0, hstep, 1.0)
            theta = ((tq - tn[:, None]) / safe_h[:, None]).clamp(0.0, 1.0)

            inner = (valid & (tq.detach() < t1_d[:, None])).any(dim=1)  # samples that interpolate

            def extra(ks, res=res, tn=tn, hstep=hstep, inner=inner):
                return _extra_stages(method, field, res, ks, tn, hstep, tdt, stats, inner)

            yq = interpolate_batched(method, res, theta, hstep, f1, extra)  # (K, B, ...)
            hit = (tq.detach() == t1_d[:, None]).T  # (K, B)
            yq = torch.where(hit.reshape(*hit.shape, *([1] * (y0.ndim - 1))), res.y1.unsqueeze(0), yq)
            entries_j.append(torch.where(valid, jj, T).T.reshape(-1))
            entries_v.append(yq.reshape(k_max * B, *y0.shape[1:]))
            j_next = j_next + cnt
        tn = torch.where(accepted, t1, tn)
        y = y_new
        h = torch.where(new_done, h, h_new.clamp(max=cfg.max_step))
        done = new_done
        if code:
            failed_at = codes
            break
        if n_run == 0:
            break
    n_acc, n_rej = torch.stack([stats.sample_accepted.sum(), stats.sample_rejected.sum()]).tolist()
    stats.n_accepted += n_acc
    stats.n_rejected += n_rej
    if jump is not None:
        ys = y.unsqueeze(0)
    else:
        out = torch.zeros(((T + 1) * B, *y0.shape[1:]), dtype=y0.dtype, device=dev)
        rows = torch.cat(entries_j)  # (M,)
        bidx = torch.arange(B, device=dev).repeat(rows.shape[0] // B)
        out = out.index_put((rows * B + bidx,), torch.cat(entries_v))
        ys = out[: T * B].reshape(T, *y0.shape)  # (T, B, ...)
    if failed_at is None:
        return Outcome(ys, h_next=h)
    status = _CODES[int(code)]
    bad = torch.nonzero(failed_at == code)[:, 0].tolist()
    if status is Status.ROOT_FINDER and root_info and root_info.get("samples"):
        bad = root_info["samples"]  # the samples whose implicit solve failed (every sample's step was rejected)
    b = bad[0]
    reached = int(j_next.min())
    tb = float(tn.detach()[b])
    what = {
        Status.MAX_STEPS: f"sample {b} took {int(n_steps[b])} steps",
        Status.STEP_SIZE_UNDERFLOW: f"the step size of sample {b} fell to {float(h_new[b]):.3g}",
        Status.NON_FINITE: f"sample {b} became non-finite",
        Status.ROOT_FINDER: f"the implicit solve of sample {b} kept failing until the step sizes could shrink no more"
        + (f" ({describe_info(root_info, skip=('samples',))})" if root_info else ""),
    }[status]
    more = f" ({len(bad)} samples failed: {bad[:5]})" if len(bad) > 1 else ""
    return Outcome(ys if jump is not None else ys[:reached], status, tb, f"{what}, stopped at t={-tb if cfg.reverse else tb:.6g}{more}", sample=b)


def _has_batch_ratio(method) -> bool:
    from ._base import AbstractAdaptiveSolver

    return type(method).error_ratio is not AbstractAdaptiveSolver.error_ratio


def _extra_stages(method, field, res, ks, tn, hstep, tdt, stats, counted):
    """Dense-output-only stages of a tableau (``a_extra``), evaluated for the batch."""
    from ._base import lincomb
    from ._tableau import ButcherTableau

    tab = method.tableau
    s = tab.stages
    h = expand_b(hstep.to(res.y0.real.dtype), res.y0)
    for r in range(tab.c_extra.shape[0]):
        terms = ButcherTableau.nonzero(tab.a_extra[r, : s + r])
        yr = lincomb(res.y0, h, terms, ks)
        ks.append(field((tn + float(tab.c_extra[r]) * hstep).to(tdt), yr))
        stats.sample_f_evals += counted
    res.cache = ks  # the step's stages for every sample: dense output reuses them
    return ks
