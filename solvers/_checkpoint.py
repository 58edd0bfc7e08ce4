"""Checkpointed gradients: the exact gradient of the discretisation in O(K) memory.

``gradient="checkpoint"`` finds the accepted step grid (adaptive methods: one solve
without a graph that records it through ``LoopConfig.record``; fixed-step methods: the
grid is known up front), then replays those steps with ``method.step`` in ``K`` segments
under ``torch.utils.checkpoint``: each segment keeps only its input state (and the FSAL
stage), and its activations are recomputed during backward. The replay uses the same
stage times, step sizes, dense output and FSAL reuse as the direct loop, and expresses
them as the same functions of ``t`` when ``t`` requires grad, so gradients equal direct
backprop to rounding (``1e-12`` in float64), for ``y0``, ``t`` and every tensor the
vector field uses (closure-captured ones too).

Costs: adaptive methods pay the recorded solve, the replay and one recomputation (about
three forward solves without the rejected steps of the last two) plus the backward;
fixed-step methods pay two forward solves plus the backward. Memory: ``K`` stored states
plus the activations of one segment of ``~n_steps/K`` steps, so ``K = sqrt(n_steps)``
(the default) gives ``O(sqrt(n_steps))``.

The number of segments is ``solve(..., gradient="checkpoint",
gradient_options={"checkpoints": K})``; without it, :data:`DEFAULT_CHECKPOINTS`
(``None`` = ``ceil(sqrt(n_steps))``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import List, Optional

import torch
import torch.utils.checkpoint as tcp

from ._api import Problem, register_gradient_mode
from ._integrate import Outcome, _check_finite, field_time_dtype, fixed_grid, integrate, method_hermite, nudge
from ._problem import VectorField
from ._solution import Stats, Status

__all__ = ["DEFAULT_CHECKPOINTS", "checkpoint_runner"]

#: Default number of checkpoint segments; ``None`` means ``ceil(sqrt(n_steps))``.
DEFAULT_CHECKPOINTS: Optional[int] = None


@dataclasses.dataclass
class _Step:
    """One accepted step of the recorded grid, with what the replay needs to redo it."""

    ts: object  # tuple of 0-dim stage-time tensors (fixed) or a float64 host tensor (adaptive)
    h: object  # float or 0-dim tensor
    t1: float
    outs: list  # fixed: [(j, theta or None)]; adaptive: list of interpolated j
    exact: Optional[int] = None  # adaptive: output index hit exactly at the step end
    thetas: Optional[torch.Tensor] = None  # adaptive, untracked
    end_time: object = None  # fixed: the step's end time tensor (cubic interpolation)
    is_end: bool = False  # adaptive: lands on t[-1]
    jumped: bool = False  # adaptive: lands on a jump_t


class _Counter(VectorField):
    """The forward field, counting replay evaluations and backward recomputations apart."""

    def __init__(self, field: VectorField, stats: Stats):
        self.__dict__.update(field.__dict__)
        self.__dict__.pop("_root_cache", None)  # the replay starts with no Jacobian, as a direct solve does
        self.stats = Stats()
        self.owner = stats
        self.backward = False

    def __call__(self, t, y):
        # counted before the call: a recomputation may stop inside the segment's last one
        if self.backward:
            self.owner.n_f_evals_backward += 1
            self.owner.n_vjp_evals += 1
        else:
            self.owner.n_f_evals += 1
        return super().__call__(t, y)


def _fixed_plan(field, y0, t, method, cfg):
    """The fixed loop's grid, stage times and outputs, exactly as ``_integrate._fixed``."""
    plan = fixed_grid(field, y0, t, method, cfg)
    if isinstance(plan, Outcome):
        return plan
    tl, gl, hs, step_ts, ends, track = plan
    n = len(gl) - 1
    steps, j = [], 1
    for i in range(n):
        t1 = gl[i + 1]
        outs = []
        while j < len(tl) and tl[j] <= t1:
            if tl[j] == t1:
                outs.append((j, None))
            else:
                outs.append((j, (t[j] - ends[i]) / hs[i] if track else (tl[j] - gl[i]) / hs[i]))
            j += 1
        steps.append(_Step(step_ts[i], hs[i], t1, outs, end_time=ends[i + 1]))
    return steps


def _adaptive_plan(record: list, t, method, cfg, ftd=torch.float64):
    """The accepted steps of a recorded adaptive solve, as ``_integrate._adaptive`` took them."""
    tl = t.detach().to(torch.float64).tolist()
    t0, tend = tl[0], tl[-1]
    cs = method.stage_c
    stops = set(float(v) for v in (*cfg.step_t, *cfg.jump_t) if t0 < float(v) < tend) | {tend}
    jumps = {float(v) for v in cfg.jump_t}
    steps, j, after_jump = [], 1, False
    for tn, t1 in zip(record, record[1:]):
        hstep = t1 - tn
        land = t1 in stops
        times = [tn + cj * hstep for cj in cs]
        if land and t1 in jumps:
            times = [nudge(t1, tn, ftd) if cj == 1.0 else x for cj, x in zip(cs, times)]
        if after_jump:
            times = [nudge(tn, t1, ftd) if cj == 0.0 else x for cj, x in zip(cs, times)]
        k0 = j
        while j < len(tl) and tl[j] < t1:
            j += 1
        thetas = None
        if j > k0 and not t.requires_grad:
            thetas = torch.tensor([(x - tn) / hstep for x in tl[k0:j]], dtype=torch.float64, device=t.device)
        exact = None
        if j < len(tl) and tl[j] == t1:
            exact = j
            j += 1
        jumped = land and t1 in jumps
        ts = torch.tensor(times, dtype=torch.float64, device=t.device)
        steps.append(_Step(ts, hstep, t1, list(range(k0, exact if exact is not None else j)), exact, thetas, is_end=land and t1 == tend, jumped=jumped))
        after_jump = jumped
    return steps


class _Replay:
    """Redoes a range of recorded steps with autograd; one call is one checkpoint segment."""

    def __init__(self, prob: Problem, field: _Counter, t: torch.Tensor, steps: List[_Step]):
        self.prob, self.field, self.t, self.steps = prob, field, t, steps
        self.method = prob.method
        self.adaptive = prob.method.adaptive
        self.track = t.requires_grad
        self.failure = None
        self.n_steps_run = 0
        self.root_state = {}  # segment start -> the root finder's per-solve cache as it was

    def _root_cache_at(self, k0: int) -> None:
        """Give a recomputed segment the root-finder cache its first run saw.

        Newton's Jacobian lives in a per-solve cache on the field and changes as the solve
        goes; without this, a recomputation in backward would start from the cache the
        *last* segment left, take other iterations and rebuild other values (so backward
        would depend on how often it ran). Shallow copies: the tensors are shared.
        """
        cache = getattr(self.field, "_root_cache", None)
        if k0 not in self.root_state:
            self.root_state[k0] = {key: copy.copy(v) for key, v in (cache or {}).items()}
            return
        if cache is None:
            cache = self.field._root_cache = {}
        cache.clear()
        cache.update({key: copy.copy(v) for key, v in self.root_state[k0].items()})

    def segment(self, k0: int, k1: int, y, f0, T_n):
        self._root_cache_at(k0)
        outs = []
        for k in range(k0, k1):
            st = self.steps[k]
            if self.field.backward:  # counted per step: recomputation may stop early
                self.prob.stats.n_steps_backward += 1
            if self.adaptive:
                y, f0, T_n = self._adaptive_step(st, k, y, f0, T_n, outs)
            else:
                y, f0 = self._fixed_step(st, y, f0, outs)
                if self.failure is not None:
                    self.failure = (k, self.failure)
                    break
        return (y, f0, T_n, *outs)

    def _fixed_step(self, st: _Step, y, f0, outs):
        field, cfg = self.field, self.prob.cfg
        if f0 is None:
            f0 = field(st.ts[0], y)
        res = self.method.step(field, st.ts, y, st.h, f0)
        if not res.ok:
            self.failure = res
            return y, f0
        f1 = res.f1
        for j, theta in st.outs:
            if theta is None:
                outs.append(res.y1)
            elif cfg.interp == "cubic":
                if f1 is None:
                    f1 = field(st.end_time, res.y1)
                outs.append(method_hermite(res, theta, f1))
            elif isinstance(theta, torch.Tensor) or y.is_complex():
                outs.append(y + theta * (res.y1 - y))
            else:
                outs.append(torch.lerp(y, res.y1, theta))
        return res.y1, (None if cfg.perturb else f1)

    def _adaptive_step(self, st: _Step, k: int, y, f0, T_n, outs):
        field, t, cs = self.field, self.t, self.method.stage_c
        tdt = t.dtype
        if self.track:
            T1 = t[-1].to(torch.float64) if st.is_end else T_n + st.h
            hh = T1 - T_n
            c_t = torch.tensor(cs, dtype=torch.float64, device=t.device)
            ts_t = st.ts + ((T_n - T_n.detach()) + (hh - hh.detach()) * c_t)
        else:
            T1, hh, ts_t = None, st.h, st.ts
        ts = ts_t.to(tdt).unbind(0)
        if f0 is None:
            f0 = field(ts[0], y)
        res = self.method.step(field, ts, y, hh, f0)
        cache = {}

        def get_f1():
            if res.f1 is not None:
                return res.f1
            if "f1" not in cache:
                if cs[-1] == 1.0:
                    t_end = ts[-1]
                else:
                    t_end = T1.to(tdt) if self.track else torch.tensor(st.t1, dtype=tdt, device=t.device)
                cache["f1"] = field(t_end, res.y1)
            return cache["f1"]

        if st.outs:
            thetas = (t[st.outs[0] : st.outs[-1] + 1].to(torch.float64) - T_n) / hh if self.track else st.thetas
            outs.extend(self.method.interpolate(res, thetas, get_f1).unbind(0))
        if st.exact is not None:
            outs.append(res.y1)
        f0 = None if st.jumped else (res.f1 if res.f1 is not None else cache.get("f1"))
        return res.y1, f0, T1


def _n_segments(prob: Problem, n_steps: int) -> int:
    opts = dict(prob.gradient_options)
    k = opts.pop("checkpoints", DEFAULT_CHECKPOINTS)
    if opts:
        raise ValueError(f"unknown checkpoint option(s) {sorted(opts)}; valid: checkpoints")
    if k is None:
        k = math.ceil(math.sqrt(n_steps))
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"gradient option `checkpoints` must be a positive int (or None for sqrt(n_steps)), got {k!r}")
    return max(1, min(k, n_steps))


def checkpoint_runner(prob: Problem) -> Outcome:
    """The ``gradient="checkpoint"`` mode (see the module docstring)."""
    if not torch.is_grad_enabled():
        _n_segments(prob, 1)  # validate the options all the same
        return prob.run()
    t, y0, method, cfg = prob.t, prob.y0, prob.method, prob.cfg
    if t.ndim == 2:
        return _checkpoint_batched(prob)
    if t.shape[0] == 1:
        return prob.run()
    fwd = None
    if method.adaptive:
        record: list = []
        with torch.no_grad():
            fwd = integrate(prob.field, y0.detach(), t.detach(), method, dataclasses.replace(cfg, record=record), prob.stats)
        steps = _adaptive_plan(record, t, method, cfg, field_time_dtype(prob.field, t))
    else:
        steps = _fixed_plan(prob.field, y0, t, method, cfg)
        if isinstance(steps, Outcome):
            return steps
    n_seg = _n_segments(prob, max(len(steps), 1))
    field = _Counter(prob.field, prob.stats)
    replay = _Replay(prob, field, t, steps)
    bounds = [round(i * len(steps) / n_seg) for i in range(n_seg + 1)]
    y, T_n = y0, (t[0].to(torch.float64) if replay.track else None)
    f0 = field(t[0] if replay.track else torch.tensor(float(t[0]), dtype=t.dtype, device=y0.device), y0) if method.adaptive else None
    ys = [y0]
    for k0, k1 in zip(bounds, bounds[1:]):
        if k1 == k0:
            continue
        y, f0, T_n, *outs = tcp.checkpoint(replay.segment, k0, k1, y, f0, T_n, use_reentrant=False)
        ys.extend(outs)
        if replay.failure is not None:
            k, res = replay.failure
            prob.stats.n_steps += k + 1
            prob.stats.n_accepted += k
            t_start = float(t.detach()[0]) if k == 0 else steps[k - 1].t1
            return Outcome(ys, Status.ROOT_FINDER, t_start, _failure_detail(res, k, -t_start if prob.reverse else t_start))
    prob.stats.n_checkpoints += n_seg
    field.backward = True
    if fwd is not None:
        out = Outcome(torch.stack(ys[: len(fwd.ys)]), fwd.status, fwd.t_fail, fwd.detail)
        return out
    prob.stats.n_steps += len(steps)
    prob.stats.n_accepted += len(steps)
    out = Outcome(ys)
    if cfg.check_finite:
        _check_finite(out, t, sign=-1.0 if prob.reverse else 1.0)
    return out


def _checkpoint_batched(prob: Problem) -> Outcome:
    """Checkpointing on a per-sample grid: segments of consecutive output intervals.

    Each segment is a per-sample-grid solve of ``t[:, k0:k1+1]`` from the state at
    ``t[:, k0]``, run under ``torch.utils.checkpoint``: only the segment's input state is
    kept and its steps are recomputed in backward. Adaptive methods restart their step
    size at each segment boundary, so the gradient is the exact gradient of this segmented
    discretisation (which agrees with the direct solve to the tolerance).
    """
    t = prob.t
    T = t.shape[1]
    if T == 1:
        _n_segments(prob, 1)
        return prob.run()
    n_seg = _n_segments(prob, T - 1)
    bounds = sorted({round(i * (T - 1) / n_seg) for i in range(n_seg + 1)})
    y = prob.y0
    ys = [y.unsqueeze(0)]

    def segment(y_in, k0, k1, h0):
        out = integrate(prob.field, y_in, t[:, k0 : k1 + 1], prob.method, prob.cfg, prob.stats, h_init=h0)
        return out.ys if isinstance(out.ys, torch.Tensor) else torch.stack(out.ys), out

    h_carry = None  # adaptive: each segment starts from the step sizes the last one ended with
    for k0, k1 in zip(bounds, bounds[1:]):
        box = {}

        def run(y_in, k0=k0, k1=k1, box=box, h0=h_carry):  # (the recomputation reuses the same h0)
            ys_k, out = segment(y_in, k0, k1, h0)
            box.setdefault("out", out)
            return ys_k

        ys_k = tcp.checkpoint(run, y, use_reentrant=False) if torch.is_grad_enabled() else run(y)
        out = box["out"]
        if prob.method.adaptive and prob.cfg.first_step is None and out.h_next is not None:
            h_carry = out.h_next.detach()
        ys.append(ys_k[1:])
        if not out.status.ok:
            return Outcome(torch.cat(ys), out.status, out.t_fail, out.detail, sample=out.sample)
        y = ys_k[-1]
    prob.stats.n_checkpoints += len(bounds) - 1
    return Outcome(torch.cat(ys))


def _failure_detail(res, k: int, t0: float) -> str:
    info = res.info or {}
    extra = ", ".join(f"{key}={v}" for key, v in info.items())
    return f"the implicit solve of step {k} (t={t0:.6g}) did not converge" + (f" ({extra})" if extra else "")


register_gradient_mode("checkpoint", checkpoint_runner)
