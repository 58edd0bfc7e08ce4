"""What ``torch.compile`` needs from a solve: a test for tracing, and the fixed-step loop on
the intervals of a tensor ``t`` that reads no value of ``t`` on the host.

While dynamo traces, a tensor has no values on the host: ``.tolist()``, ``.item()`` and
``bool(tensor)`` break the graph. A fixed-step solve needs host values only for (a) input
checks (finite, monotonic ``t``; a finite final state), (b) the direction of time and
(c) the number of steps when it follows from ``step_size``. Under tracing:

- (a) is skipped (run the same call once in eager to have the input checked);
- (b) is not needed: an explicit step with a negative ``h`` integrates backwards, so the
  loop runs in the user's time;
- (c) the steps are ``t``'s own intervals (``len(t) - 1``, a shape), or ``t`` is given as
  Python floats (a list), whose values the tracer sees.

With ``step_size`` and a tensor ``t`` the number of steps depends on ``t``'s values, so that
case keeps its host read (one graph break) instead of failing.
"""

from __future__ import annotations

import torch

__all__ = ["compiling", "traceable_fixed", "runs_on_t", "fixed_on_t"]


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing this call (constant ``True`` inside the graph)."""
    fn = getattr(torch.compiler, "is_compiling", None)
    return bool(fn()) if fn is not None else False


def traceable_fixed(method, options: dict) -> bool:
    """Whether a solve can step on the intervals of ``t`` with no host value of ``t``: an
    explicit one-step method of the shared loop with no ``step_size``/``grid_constructor``/``perturb``."""
    if method.adaptive or method.implicit or not method.one_step or getattr(method, "integrate", None) is not None:
        return False
    return all(options.get(k) in (None, False) for k in ("step_size", "grid_constructor", "perturb"))


def runs_on_t(method, cfg) -> bool:
    """:func:`traceable_fixed` for the loop, from its :class:`LoopConfig`."""
    opts = dict(step_size=cfg.step_size, grid_constructor=cfg.grid_constructor, perturb=cfg.perturb)
    return traceable_fixed(method, opts)


def fixed_on_t(field, y0: torch.Tensor, t: torch.Tensor, method, cfg, stats):
    """Step ``t``'s own intervals (increasing or decreasing): one output per time, no host read."""
    from ._integrate import Outcome, field_time_dtype
    from ._solution import Status

    n = t.shape[0] - 1
    if n > cfg.max_num_steps:  # a shape: known while tracing
        return Outcome([y0], Status.MAX_STEPS, None, f"the grid has {n} steps but max_num_steps={cfg.max_num_steps}")
    g = t.to(torch.float64)  # (n+1,)
    hs = g[1:] - g[:-1]  # (n,) signed
    c = torch.tensor(method.stage_c, dtype=torch.float64, device=g.device)
    stage_t = (g[:-1, None] + hs[:, None] * c).to(field_time_dtype(field, t))  # (n, s)
    outs, y, f0 = [y0], y0, None
    for i in range(n):
        ts = stage_t[i].unbind(0)
        if f0 is None:
            f0 = field(ts[0], y)
        res = method.step(field, ts, y, hs[i], f0)
        y, f0 = res.y1, res.f1
        outs.append(y)
    stats.n_steps += n
    stats.n_accepted += n
    return Outcome(outs)
