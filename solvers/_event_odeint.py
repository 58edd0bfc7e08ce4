"""torchdiffeq's event mode on the functional door: ``odeint(..., event_fn=...)``,
``odeint_adjoint(..., event_fn=...)`` and ``odeint_event`` (torchdiffeq 0.2.5 semantics).

The solve has no end time: it runs in windows ``[t0, t0 + H]``, ``[t0 + H, t0 + 3H]``, ...
(``H = |t[1] - t[0]|``, doubling) until the event fires, each window one solve of the shared
loop with a terminal :class:`~solvers.Event`. A multivariate ``event_fn`` is combined as in
torchdiffeq: the solve stops when any component changes sign, ``min(c * sign(c(t0)))``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ._events import Event, ift_reroute
from ._problem import split_state
from ._solution import MaxStepsError

__all__ = ["odeint_until_event", "odeint_event"]


def _combined(event_fn: Callable, t0, y0) -> Callable:
    with torch.no_grad():
        c0 = event_fn(t0, y0)
    if not isinstance(c0, torch.Tensor):
        raise TypeError(f"`event_fn` must return a tensor, got {type(c0).__name__}")
    s0 = torch.sign(c0)

    def g(t, y):
        return torch.min(event_fn(t, y) * s0)

    return g


def _last(ys, tup: bool):
    return tuple(p[-1] for p in ys) if tup else ys[-1]


def odeint_until_event(func, y0, t, event_fn, *, rtol, atol, method, options, adjoint: Optional[dict] = None):
    """``(event_t, solution)`` with ``solution`` the states at ``[t0, event_t]``.

    ``event_t`` carries no gradient (as torchdiffeq; :func:`odeint_event` adds it); the event
    state is differentiable at the fixed event time: by backpropagation through the steps,
    or (``adjoint`` given: the keyword arguments of ``odeint_adjoint``) by the adjoint of a
    solve on ``[t0, event_t]`` after the event was located without a graph.
    """
    from ._api import _direct, finish, make_problem
    from ._solve_hooks import SolveHooks

    if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] != 2:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"with `event_fn`, `t` must be a 1-D tensor [t0, t1] of length 2 (t1 only sets the direction, as in torchdiffeq), got {got}")
    if not callable(event_fn):
        raise TypeError(f"`event_fn` must be callable as event_fn(t, y), got {type(event_fn).__name__}")
    tup = not isinstance(y0, torch.Tensor)
    t0v, t1v = (float(v) for v in t.detach().tolist())
    if t1v == t0v or not (math.isfinite(t0v) and math.isfinite(t1v)):
        raise ValueError(f"with `event_fn`, `t` = [t0, t1] needs finite t1 != t0 to set the direction, got [{t0v}, {t1v}]")
    direction = 1.0 if t1v > t0v else -1.0
    options = dict(options or {})
    max_steps = options.get("max_num_steps", 2**31 - 1)
    method = "dopri5" if method is None else method
    t0 = t[0]
    g = _combined(event_fn, t0.detach(), y0)
    with torch.no_grad():
        immediate = bool(g(t0.detach(), y0) == 0)
    stack = (lambda a, b: tuple(torch.stack([p, q]) for p, q in zip(a, b))) if tup else (lambda a, b: torch.stack([a, b]))
    if immediate:  # torchdiffeq: an event function that is zero at t0 fires there
        return t0.detach(), stack(y0, y0)
    y = y0
    if adjoint is None and t0.requires_grad:
        # d y(t_e) / d t0 = -Phi f(t0, y0): start from y0 shifted along f, on detached times
        f0 = func(t0, y0)  # t0 = t[0]: a 0-dim tensor, as every time the field receives
        shift = (t0 - t0.detach()).to(y0[0].dtype if tup else y0.dtype)
        y = tuple(p - q.detach() * shift for p, q in zip(y0, f0)) if tup else y0 - f0.detach() * shift
    start, H, steps = t0v, abs(t1v - t0v), 0
    with torch.set_grad_enabled(torch.is_grad_enabled() and adjoint is None):
        while True:
            end = start + direction * H
            if not math.isfinite(end):
                raise MaxStepsError(f"the event did not happen before t ran out of floating-point range ({steps} steps from t={t0v:.6g})", t=start)
            tt = torch.tensor([start, end], dtype=t.dtype, device=t.device)
            prob = make_problem(func, y, tt, method=method, rtol=rtol, atol=atol, options=options)
            if not prob.method.adaptive and options.get("step_size") is None:
                raise ValueError(f"event handling with the fixed-step method {prob.method.name!r} needs `options=dict(step_size=...)` (as in torchdiffeq)")
            hooks = SolveHooks(prob, Event(g, terminal=True), False, "direct", ift=False)
            sol = hooks.finish(finish(prob, _direct(prob), tt, True))
            steps += prob.stats.n_steps
            if bool(sol.event_mask):
                break
            if steps >= max_steps:
                raise MaxStepsError(f"the event did not happen within max_num_steps={max_steps} steps (t reached {end:.6g})", t=end)
            y, start, H = _last(sol.ys, tup), end, 2 * H
    event_t = sol.event_t.detach().to(t.dtype)
    if adjoint is None:
        return event_t, stack(y0, sol.event_y)
    from ._adjoint import odeint_adjoint

    te = torch.stack([t0, event_t.to(t0.device)])
    return event_t, odeint_adjoint(func, y0, te, rtol=rtol, atol=atol, method=method, options=options, **adjoint)


def odeint_event(func: Callable, y0, t0, *, event_fn: Callable, reverse_time: bool = False, odeint_interface: Optional[Callable] = None, **kwargs):
    """Integrate from ``t0`` until ``event_fn(t, y)`` crosses zero: torchdiffeq's ``odeint_event``.

    Returns ``(event_t, solution)``, ``solution`` holding the states at ``[t0, event_t]``.
    ``event_t`` has implicit-function-theorem gradients with respect to ``y0``, ``t0``, the
    parameters of ``func`` and those ``event_fn`` uses (directly or through the state):
    ``dt_e/dp = -(dg/dp + dg/dy dy/dp) / (dg/dt + dg/dy f)``. ``odeint_interface`` is
    :func:`solvers.odeint` (default) or :func:`solvers.odeint_adjoint`; ``kwargs`` go to it.
    """
    if odeint_interface is None:
        from ._api import odeint as odeint_interface
    if not isinstance(t0, torch.Tensor) or t0.numel() != 1:
        raise TypeError(f"`t0` must be a one-element tensor, got {type(t0).__name__ if not isinstance(t0, torch.Tensor) else tuple(t0.shape)}")
    if not t0.dtype.is_floating_point:
        raise TypeError(f"`t0` must be a floating-point tensor, got {t0.dtype}")
    step = -1.0 if reverse_time else 1.0
    t = torch.cat([t0.reshape(-1), t0.reshape(-1).detach() + step])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    tup = not isinstance(y0, torch.Tensor)
    g = _combined(event_fn, t[0].detach(), y0)
    state = _last(solution, tup)
    shapes = [p.shape for p in state] if tup else None
    flat = torch.cat([p.reshape(-1) for p in state]) if tup else state
    with torch.no_grad():
        f = func(event_t.detach(), tuple(p.detach() for p in state) if tup else state.detach())
        fdot = torch.cat([p.reshape(-1) for p in f]) if tup else f
    gfl = (lambda tt, yy: g(tt, split_state(yy, shapes))) if tup else g
    event_t, flat = ift_reroute(gfl, event_t, flat, fdot.to(flat.dtype))
    if tup:
        return event_t, tuple(torch.cat([s[:-1], p[None]]) for s, p in zip(solution, split_state(flat, shapes)))
    return event_t, torch.cat([solution[:-1], flat[None]])
