"""What ``solve(..., events=..., dense=True)`` adds to a plain solve: the loop hooks and
the post-processing of the :class:`Solution` (event fields, frozen samples, ``evaluate``)."""

from __future__ import annotations

import dataclasses

import torch

from ._dense import DenseOutput, DenseRecorder
from ._dense_grids import BatchedDenseOutput, BatchedDenseRecorder
from ._events import Event, EventTracker

__all__ = ["SolveHooks"]


class SolveHooks:
    """Attach event location and/or dense output to a :class:`~solvers._api.Problem`.

    ``ift``: give the event times implicit-function-theorem gradients (``solve``); the
    torchdiffeq door reports them without (``odeint(event_fn=...)``, as torchdiffeq).
    """

    def __init__(self, prob, events, dense: bool, gradient: str, ift: bool = True):
        if not isinstance(dense, bool):
            raise TypeError(f"`dense` must be a bool, got {dense!r}")
        what = "`events`" if events is not None else "`dense=True`"
        self.batched = prob.t.ndim == 2
        if self.batched and events is not None:
            raise ValueError("`events` is not supported on a per-sample `t` of shape [B, T]; use a shared 1-D `t` (dense=True does work there)")
        if getattr(prob.method, "integrate", None) is not None:
            raise ValueError(f"{what} needs a method of the shared loop; {prob.method.name!r} runs its own loop. Use e.g. 'dopri5', 'tsit5', 'rk4' or 'kvaerno5'")
        if prob.t.requires_grad:
            raise ValueError(f"{what} needs a `t` that does not require grad (the recorded interpolants are not differentiated with respect to the grid); pass t.detach(), or use odeint_event for gradients with respect to t0")
        if gradient != "direct":
            raise ValueError(f"{what} needs gradient='direct' (the recorded steps carry the graph); got gradient={gradient!r}. For adjoint gradients of an event use odeint_adjoint(..., event_fn=...)")
        if events is not None and not isinstance(events, Event):
            if not callable(events):
                raise TypeError(f"`events` must be a solvers.Event or a callable fn(t, y), got {type(events).__name__}")
            events = Event(events)
        self.prob, self.ift = prob, ift
        if self.batched:  # dense output only (events are refused above)
            self.tracker = None
            self.rec = BatchedDenseRecorder()
            prob.cfg.on_batch_step = self.rec
            return
        u0 = float(prob.t[0])
        self.tracker = EventTracker(events, prob.method, prob.y0, u0, prob.reverse, prob.shapes, prob.t.dtype, prob.stats) if events is not None else None
        self.rec = DenseRecorder() if dense else None
        rec, tracker = self.rec, self.tracker

        def on_accept(res, t0, t1, get_f1):
            if rec is not None:
                rec(res, t0, t1, get_f1)
            return tracker is not None and tracker(res, t0, t1, get_f1)

        prob.cfg.on_accept = on_accept

    def finish(self, sol):
        prob, tr = self.prob, self.tracker
        if self.batched:
            dense = BatchedDenseOutput(self.rec, prob.method, prob.field, prob.y0, prob.t, prob.reverse, prob.stats)
            return dataclasses.replace(sol, dense=dense)
        ys, ts, extra, post = sol.ys, sol.ts, {}, None
        stop = None
        if tr is not None:
            event_t, event_y, mask = tr.results(self.ift)
            extra = dict(event_t=event_t, event_y=event_y, event_mask=mask)
            stop = tr.stopped_at
            sign = -1.0 if prob.reverse else 1.0
            if stop is not None:  # drop outputs past the last terminal event
                keep = int(((ts.detach().to(torch.float64) * sign) <= stop).sum())
                ts = ts[:keep]
                ys = tuple(p[:keep] for p in ys) if isinstance(ys, tuple) else ys[:keep]
            if tr.batched and tr.event.terminal:
                u_e = (event_t.detach().to(torch.float64) * sign)  # (B,) loop time, NaN: never fired

                def post(t_user, y):  # (m,), (m, B, ...): a stopped sample keeps its event state
                    after = (t_user.detach().to(torch.float64).to(u_e.device)[:, None] * sign) > u_e[None, :]  # (m, B)
                    after = after.reshape(*after.shape, *([1] * (y.ndim - 2)))
                    return torch.where(after, event_y.unsqueeze(0), y)

                ys = post(ts, ys) if ys.shape[0] else ys
        if self.rec is not None:
            extra["dense"] = DenseOutput(self.rec, prob.method, prob.y0, float(prob.t[0]), prob.reverse, prob.shapes, prob.t.dtype, t_end=stop, post=post)
        return dataclasses.replace(sol, ys=ys, ts=ts, **extra)
