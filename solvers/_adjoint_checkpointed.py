"""The checkpointed continuous adjoint: the adjoint solve restarted from stored forward states.

``gradient="checkpointed_adjoint"`` (ACA, Zhuang et al. 2020, "Adaptive Checkpoint Adjoint
method for gradient estimation in neural ODE") keeps the state of every accepted forward
step: the forward solve runs without a graph, as for ``gradient="adjoint"``, and records
the accepted step times and the states there. The backward pass integrates the same
augmented system as the plain adjoint (state, adjoint, parameter adjoint; see
:mod:`solvers._adjoint`), but over one accepted forward step at a time, each time *from the
stored forward state* at the step's end. The state is therefore never carried backwards
over more than one step, so the instability of reverse-time integration of a dissipative
field (the plain adjoint's failure mode, ANODE, Gholami et al. 2019) cannot accumulate: the
error of the rebuilt state is that of one backward step, and the gradient matches direct
backpropagation to the solve's tolerance.

Costs: memory is ``O(n_steps)`` state vectors (no activations, no stage values); the
backward pass makes one backward solve per accepted step (starting with the forward step
as its first step, so the usual initial-step search is skipped). Output times inside a step
split its interval.

The tolerances, method and options of the backward solves are those of the plain adjoint
(``gradient_options``: ``rtol``, ``atol``, ``method``, ``options``). The largest scaled
mismatch between a backward step's rebuilt state and the stored state at its start is
recorded as ``Stats.adjoint_rebuild_error`` (informative: the stored state is used
regardless).

On a per-sample grid (``t`` ``[B, T]``) the forward keeps, through the loop's
``on_batch_step`` hook, every batched step's ends, accept flags and new states; the backward
is the per-sample adjoint's one backward solve (:mod:`solvers._adjoint_grids`) with every
sample's accepted step ends as stops too, where its state restarts from the stored one.
"""

from __future__ import annotations


import torch
from torch.autograd.function import once_differentiable

from ._api import Problem, make_problem, register_gradient_mode
from ._adjoint import _Augmented, _Backward, _aug_tol, _record, _state_func, backward_errors, backward_norm, resolve_params
from ._adjoint_rebuild import rebuild_error
from ._integrate import Outcome
from ._problem import split_state
from ._solution import exception_for

__all__ = ["checkpointed_adjoint_runner"]


class _Recording:
    """A method wrapper that keeps the state every step starts from (and the last step's end).

    The loops hand ``step`` the current accepted state; a rejected step is retried from the
    same tensor, so a new tensor object marks a new accepted state. Everything else is
    delegated to the wrapped method.
    """

    def __init__(self, method):
        self._method = method
        self.starts: list = []
        self.last = None

    def __getattr__(self, name):
        return getattr(self._method, name)

    def step(self, field, ts, y, h, f0):
        if not self.starts or self.starts[-1] is not y:
            self.starts.append(y)
        res = self._method.step(field, ts, y, h, f0)
        self.last = res.y1
        return res


class _CheckpointedAdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, box, y0, t, *params):
        prob: Problem = box["prob"]
        if t.ndim == 2:
            return _forward_batched(ctx, box, y0, t)
        record: list = []
        method = _Recording(prob.method)
        saved_cfg, saved_method = prob.cfg.record, prob.method
        prob.cfg.record, prob.method = record, method
        try:
            outcome = prob.run(y0=y0.detach(), t=t.detach())
        finally:
            prob.cfg.record, prob.method = saved_cfg, saved_method
        ys = outcome.ys if isinstance(outcome.ys, torch.Tensor) else torch.stack(outcome.ys)
        box["outcome"] = outcome
        if outcome.status.ok:
            states = method.starts + ([method.last] if method.last is not None else [])
            if len(states) != len(record):  # an internal invariant: one stored state per recorded step
                raise RuntimeError(f"checkpointed adjoint: {len(states)} stored states for {len(record)} recorded "
                                   "steps (a bug in solvers; please report it)")
            box["nodes"] = (list(record), states)
        ctx.box = box
        ctx.save_for_backward(ys, t)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys):
        ys, t_int = ctx.saved_tensors
        box = ctx.box
        if "nodes" not in box:
            raise RuntimeError("backward through a failed checkpointed-adjoint solve")
        if t_int.ndim == 2:  # per-sample grid: the one backward solve with the step ends as stops
            from ._adjoint_grids import backward_batched

            steps = box["nodes"]
            g_y0, g_t, g_params = backward_batched(box["bwd"], ys, t_int, grad_ys, ctx.needs_input_grad[2], steps=steps, record_only=True)
            if steps is not None:
                box["prob"].stats.n_checkpoints += int(steps[1].sum())
        else:
            g_y0, g_t, g_params = _backward(box["bwd"], ys, t_int, grad_ys, box["nodes"], ctx.needs_input_grad[2])
        return (None, g_y0, g_t, *g_params)


def _forward_batched(ctx, box, y0, t):
    """The forward of a per-sample grid: every sample's accepted step ends and states kept
    (``box["nodes"]``: ``(t1, accepted, y1)`` stacked over the batched steps, or None)."""
    prob: Problem = box["prob"]
    saved = prob.cfg.on_batch_step
    store = prob.cfg.on_batch_step = _StepStore(saved)
    try:
        outcome = prob.run(y0=y0.detach(), t=t.detach())
    finally:
        prob.cfg.on_batch_step = saved
    ys = outcome.ys if isinstance(outcome.ys, torch.Tensor) else torch.stack(outcome.ys)
    box["outcome"] = outcome
    if outcome.status.ok:
        box["nodes"] = store.steps() if store.t1 else None
    ctx.box = box
    ctx.save_for_backward(ys, t)
    return ys


class _StepStore:
    """``on_batch_step`` hook of a per-sample-grid solve: every batched step's ends, which
    samples accepted, and their new states (no stages, no graph)."""

    def __init__(self, inner=None):
        self.inner, self.t1, self.acc, self.y1 = inner, [], [], []

    def __call__(self, res, accepted, tn, t1, f1) -> None:
        self.t1.append(t1.detach())
        self.acc.append(accepted.detach())
        self.y1.append(res.y1.detach())
        if self.inner is not None:
            self.inner(res, accepted, tn, t1, f1)

    def steps(self):
        return torch.stack(self.t1), torch.stack(self.acc), torch.stack(self.y1)


def _merged_nodes(record: list, states: list, tl: list, ys: torch.Tensor):
    """Step ends and output times, increasing: ``[(time, state, output index or None)]``."""
    nodes = {s: [st, None] for s, st in zip(record, states)}
    for j, s in enumerate(tl):
        if s in nodes:
            nodes[s][1] = j
        else:
            nodes[s] = [ys[j], j]
    return [(s, *nodes[s]) for s in sorted(nodes)]


def _backward(bw: _Backward, ys, t_int, grad_ys, saved, need_t: bool):
    """One backward solve per interval between consecutive nodes, each from the stored state."""
    prob = bw.prob
    params = bw.params
    n = ys.shape[0]
    tl = t_int.detach()[:n].tolist()
    nodes = _merged_nodes(*saved, tl, ys)
    sign = -1.0 if prob.reverse else 1.0
    t_user = (-t_int if prob.reverse else t_int).detach()[:n]
    dtype = prob.y0.dtype
    f = _state_func(prob.func, prob.shapes, prob.field.time_dtype)
    stats = prob.stats
    aug = _Augmented(f, params, dtype)
    grad_ys = grad_ys.to(dtype)
    a = grad_ys[n - 1]
    a_p = [torch.zeros(p.shape, dtype=dtype, device=prob.y0.device) for p in params]
    g_t = torch.zeros(n, dtype=t_int.dtype, device=t_int.device) if need_t else None
    extra_f = 0
    worst = 0.0
    bprob = None
    with torch.no_grad():
        if len(nodes) > 1:
            u_back = torch.tensor([sign * s for s, _, _ in reversed(nodes)], dtype=t_int.dtype, device=t_int.device)
            opts = dict(bw.options)
            norm_spec = opts.pop("norm", None)
            z0 = (nodes[-1][1], a, *a_p)
            bprob = make_problem(aug, z0, u_back, method=bw.method, rtol=_aug_tol(bw.rtol, prob, params),
                                 atol=_aug_tol(bw.atol, prob, params), options=opts)
            bprob.field.time_dtype = prob.field.time_dtype
            aug.differentiable = bool(getattr(bprob.method, "implicit", False))
            bprob.cfg.norm = backward_norm(norm_spec, prob, bprob.shapes)
            if not bprob.method.adaptive:  # one step per forward step: the nodes are the grid
                bprob.cfg.step_size, bprob.cfg.grid_constructor = None, None
            for k in range(len(nodes) - 1):
                m = len(nodes) - 1 - k  # integrate node m -> node m-1
                s1, y1, j1 = nodes[m]
                s0, y0_stored, j0 = nodes[m - 1]
                if need_t and j1 is not None and j1 > 0:
                    g_t[j1] = torch.sum(f(t_user[j1], ys[j1]) * grad_ys[j1]).to(g_t.dtype)
                    extra_f += 1
                if bprob.method.adaptive and bw.options.get("first_step") is None:
                    bprob.cfg.first_step = s1 - s0  # the forward step was accepted at this size
                zf = torch.cat([y1.reshape(-1), a.reshape(-1), *[p.reshape(-1) for p in a_p]])
                with backward_errors(f"integrating from t={sign * s1:.6g} to t={sign * s0:.6g}"):
                    out = bprob.run(y0=zf, t=bprob.t[k : k + 2])
                if not out.status.ok:
                    _record(stats, bprob.stats, extra_f)
                    msg = (f"{out.status.value} This happened in the backward (checkpointed adjoint) pass, "
                           f"integrating from t={sign * s1:.6g} to t={sign * s0:.6g}: {out.detail}. "
                           "Try other `adjoint_rtol`/`adjoint_atol`, `adjoint_options` or `adjoint_method`.")
                    raise exception_for(out.status)(msg, t=sign * s0)
                parts = split_state(out.ys[-1], bprob.shapes)
                worst = max(worst, rebuild_error(parts[0], y0_stored, bw.rtol, bw.atol))
                a = parts[1] + (grad_ys[j0] if j0 is not None else 0)
                a_p = list(parts[2:])
        if need_t:
            g_t[0] = -torch.sum(f(t_user[0], ys[0]) * (a - grad_ys[0])).to(g_t.dtype)
            extra_f += 1
            if prob.reverse:
                g_t = -g_t
            if n < t_int.shape[0]:
                g_t = torch.cat([g_t, g_t.new_zeros(t_int.shape[0] - n)])
    if bprob is not None:
        _record(stats, bprob.stats, extra_f)
    elif extra_f:
        stats.n_f_evals_backward += extra_f
    stats.adjoint_rebuild_error = max(stats.adjoint_rebuild_error, worst)
    stats.n_checkpoints += len(nodes)
    return a, g_t, [g.to(p.dtype) for g, p in zip(a_p, params)]


def checkpointed_adjoint_runner(prob: Problem) -> Outcome:
    """The ``gradient="checkpointed_adjoint"`` mode (see the module docstring)."""
    params = resolve_params(prob)
    opts = dict(prob.gradient_options)
    if opts.pop("rebuild_tol", None) is not None:
        raise ValueError("gradient='checkpointed_adjoint' never rebuilds the state over more than one "
                         "step, so it takes no `rebuild_tol`; remove it")
    prob.gradient_options = opts
    bw = _Backward(prob, params)
    box = {"prob": prob, "bwd": bw}
    ys = _CheckpointedAdjointFunction.apply(box, prob.y0, prob.t, *params)
    out = box["outcome"]
    return Outcome(ys, out.status, out.t_fail, out.detail)


register_gradient_mode("checkpointed_adjoint", checkpointed_adjoint_runner)
