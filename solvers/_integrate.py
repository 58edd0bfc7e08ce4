"""The integration loops: the only places that step, control the step size and produce
outputs. ``integrate`` dispatches to the fixed-grid or the adaptive loop by method type.

Time runs forward here (the API negates decreasing time before it arrives). Control is
done in Python floats; the stage times handed to the vector field are 0-dim tensors in
``t``'s dtype. When ``t`` requires grad, the stage times and the step size also carry the
exact derivative of the discretisation with respect to ``t`` (decisions of the controller
are treated as constants).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional

import torch

from ._base import AbstractSolver, StepResult, describe_info
from ._compile import compiling, fixed_on_t, runs_on_t
from ._controller import AbstractController, initial_step
from ._problem import VectorField
from ._solution import Stats, Status

__all__ = ["LoopConfig", "Outcome", "integrate"]


@dataclasses.dataclass
class LoopConfig:
    rtol: object = 1e-7
    atol: object = 1e-9
    norm: Optional[Callable] = None
    controller: Optional[AbstractController] = None
    step_size: Optional[float] = None
    grid_constructor: Optional[Callable] = None
    perturb: bool = False
    interp: str = "linear"
    first_step: Optional[float] = None
    min_step: float = 0.0
    max_step: float = math.inf
    max_num_steps: int = 2**31 - 1
    step_t: tuple = ()
    jump_t: tuple = ()
    check_finite: bool = True
    #: ``torch.compile`` backend of each adaptive explicit RK step (option ``compile_step``,
    #: :mod:`solvers._compiled_step`); None: eager steps.
    compile_step: Optional[str] = None
    #: The user's time runs backwards (the loop sees it negated): messages show ``-t``.
    reverse: bool = False
    #: When a list, the loop appends the end time of every accepted step (as a float, after
    #: the start time ``t[0]``), so a gradient mode can replay the exact discretisation.
    record: Optional[list] = None
    #: When set, ``on_accept(res, t0, t1, get_f1)`` runs after every accepted step (floats
    #: in the loop's time); returning True ends the solve after that step's outputs
    #: (events and dense output, :mod:`solvers._events`, :mod:`solvers._dense`).
    on_accept: Optional[Callable] = None
    #: Per-sample grids (``t`` ``[B, T]``): when set, ``on_batch_step(res, accepted, tn, t1, f1)``
    #: runs after every batched step with ``[B]`` masks/times (float64, the loop's time) and
    #: ``f1 = f(t1, y1)`` or ``None`` when the next step evaluates it (:mod:`solvers._dense_grids`).
    on_batch_step: Optional[Callable] = None
    #: ``(t, floats)``: the values of the loop's ``t`` as Python floats, known to the API
    #: without reading the device (used only while the loop runs on that very ``t``).
    host_t: Optional[tuple] = None


@dataclasses.dataclass
class Outcome:
    ys: List[torch.Tensor]
    status: Status = Status.SUCCESS
    t_fail: Optional[float] = None
    detail: str = ""
    #: per-sample grids: the first sample that failed
    sample: Optional[int] = None
    #: the plain fixed-step loop's ``(func, step_ts, hs, c, n)``, from which ``solve`` makes a
    #: :class:`solvers._replay.PlainReplay` (None for every other loop)
    plain: Optional[tuple] = None
    #: adaptive loops: the next step size (a float; ``[B]`` on per-sample grids, see
    #: ``adaptive_batched``), for a caller that solves interval after interval
    h_next: Optional[object] = None


def show_t(cfg: "LoopConfig", x: float) -> float:
    """An internal (increasing) time as the user's time, for messages."""
    return -x if cfg.reverse else x


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


def max_of_rms(parts) -> torch.Tensor:
    """The default error norm of a tuple state: the largest RMS of its parts."""
    return torch.stack([rms_norm(p) for p in parts]).max()


def integrate(field, y0: torch.Tensor, t: torch.Tensor, method: AbstractSolver, cfg: LoopConfig, stats: Stats,
              h_init: Optional[torch.Tensor] = None) -> Outcome:
    """Solve ``dy/dt = field(t, y)`` from ``y0`` at ``t[0]`` and return the states at ``t``.

    A 2-D ``t`` (``[B, T]``, increasing rows, padded by repeats) is a per-sample grid and
    goes to the batched loops of :mod:`solvers._grids`; ``ys`` is then ``[T, B, ...]``, and an
    adaptive method starts from the step sizes ``h_init`` ``[B]`` when given (a caller that
    solves segment after segment carries the last segment's ``Outcome.h_next`` on).
    """
    if t.ndim == 2:
        return _integrate_batched(field, y0, t, method, cfg, stats, h_init)
    if t.shape[0] == 1:
        return Outcome([y0])
    own_loop = getattr(method, "integrate", None)  # multistep methods, wrappers (solvers._ownloop)
    if compiling() and host_times(cfg, t) is None and runs_on_t(method, cfg):
        return fixed_on_t(field, y0, t, method, cfg, stats)  # traced: no host read of t
    if own_loop is not None:
        out = own_loop(field, y0, t, cfg, stats)
    elif method.adaptive:
        out = _adaptive(field, y0, t, method, cfg, stats)
    else:
        out = _fixed(field, y0, t, method, cfg, stats)
    if cfg.check_finite and out.status.ok and not compiling():  # a host read: skipped when traced
        _check_finite(out, t, last_only=not method.adaptive, sign=-1.0 if cfg.reverse else 1.0)
    return out


def host_times(cfg: LoopConfig, t: torch.Tensor) -> Optional[list]:
    """``t``'s values as floats if the API already has them (``LoopConfig.host_t``), else ``None``."""
    ht = cfg.host_t
    return ht[1] if ht is not None and ht[0] is t else None


def _integrate_batched(field, y0, t, method, cfg, stats, h_init=None) -> Outcome:
    from ._grids import fixed_batched
    from ._grids_adaptive import adaptive_batched

    td = t.detach()
    lengths = 1 + (td[:, 1:] != td[:, :-1]).sum(dim=1)  # (B,) distinct times per row (rows are monotonic)
    if t.shape[1] == 1:
        return Outcome(y0.unsqueeze(0))
    if method.adaptive:
        out = adaptive_batched(field, y0, t, lengths, method, cfg, stats, h_init=h_init)
    else:
        out = fixed_batched(field, y0, t, lengths, method, cfg, stats)
    if not isinstance(out.ys, torch.Tensor):
        out.ys = torch.stack(out.ys)
    if cfg.check_finite and out.status.ok and not compiling() and not _all_finite(out.ys[-1] if not method.adaptive else out.ys):
        bad = ~torch.isfinite(out.ys.detach().reshape(*out.ys.shape[:2], -1)).all(dim=2)  # (T, B)
        k, b = (int(v) for v in torch.nonzero(bad)[0])
        tb = float(t.detach()[b, k])
        out.status, out.t_fail, out.sample = Status.NON_FINITE, tb, b
        out.detail = f"the state of sample {b} is non-finite at output time t={show_t(cfg, tb):.6g}"
        out.ys = out.ys[:k]
    return out


def _check_finite(out: Outcome, t: torch.Tensor, last_only: bool = False, sign: float = 1.0) -> None:
    """One synchronisation after the loop: find the first non-finite output, if any.

    ``last_only``: on a fixed grid the last output is the last state, and a state that
    became non-finite stays non-finite (``y + h*k`` with ``y`` inf or NaN is inf or NaN),
    so checking it alone decides; the full search runs only on failure.
    """
    ys = torch.stack(out.ys)
    out.ys = ys
    if _all_finite(ys[-1] if last_only else ys):
        return
    with torch.no_grad():
        k = int(torch.nonzero(~torch.isfinite(ys).reshape(ys.shape[0], -1).all(dim=1))[0, 0])
    tl = t.detach().tolist()
    out.status = Status.NON_FINITE
    out.t_fail = tl[k]
    out.detail = f"the state is non-finite at output time t={sign * tl[k]:.6g}" + (f" (last finite output at t={sign * tl[k - 1]:.6g})" if k else "")
    out.ys = out.ys[:k]


def _abs32(y: torch.Tensor) -> torch.Tensor:
    """``|y|`` for error scaling: in float32 for half-precision states (their own range
    cannot hold ``atol`` or the scaled errors)."""
    a = torch.abs(y)
    return a.float() if a.dtype in (torch.float16, torch.bfloat16) else a


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` is finite: one reduction kernel and one host read in
    the common case, cheaper than ``isfinite(x).all()``. NaN and inf make the sum
    non-finite; a non-finite sum of finite entries (overflow) is ruled out by the full
    test, which runs only then."""
    x = x.detach()
    if x.is_complex():
        x = torch.view_as_real(x)
    if x.numel() == 0:
        return True
    if math.isfinite(float(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


# ----------------------------------------------------------------------------- fixed grid


def field_time_dtype(field, t: torch.Tensor) -> torch.dtype:
    """The dtype the vector field takes its time in (a :class:`VectorField`'s choice)."""
    return getattr(field, "time_dtype", t.dtype)


def nudge(x: float, toward: float, dtype: torch.dtype) -> float:
    """The neighbour of ``x`` towards ``toward`` in ``dtype`` (the field's time dtype), so
    that a stage time next to a jump stays on its side after the cast to that dtype."""
    if dtype == torch.float64:
        return math.nextafter(x, toward)
    # the neighbour of the rounded x is on the far side of both x and its rounding
    return float(torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(toward, dtype=dtype)))


def _host_grid(tl: list, cfg: LoopConfig) -> list:
    """The step grid as Python floats: ``t`` itself, or steps of ``step_size`` ending on t[-1]."""
    if cfg.step_size is None:
        return list(tl)
    start, end = tl[0], tl[-1]
    n = max(1, math.ceil((end - start) / cfg.step_size - 1e-9))
    return [min(start + i * cfg.step_size, end) for i in range(n)] + [end]


def _custom_grid(field, y0, t, cfg: LoopConfig) -> torch.Tensor:
    grid = cfg.grid_constructor(field, y0, t)
    if not isinstance(grid, torch.Tensor) or grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError("`grid_constructor` must return a 1-D tensor of at least two times")
    gl = grid.detach().tolist()
    tl = t.detach().tolist()
    if gl[0] != tl[0] or gl[-1] != tl[-1]:
        raise ValueError(f"`grid_constructor` must return a grid from t[0]={tl[0]} to t[-1]={tl[-1]}, got {gl[0]} .. {gl[-1]}")
    if any(b <= a for a, b in zip(gl, gl[1:])):
        raise ValueError("`grid_constructor` must return a strictly increasing grid")
    return grid.to(device=t.device, dtype=torch.float64)


#: Host-side grid work of untracked fixed-step solves, reused by repeated solves on the same
#: ``t`` (a ResNet forward): key -> (gl, hs, per-step stage-time tuples, step-start times).
_GRID_CACHE: dict = {}
_GRID_CACHE_SIZE = 64
#: Grids up to this many steps are unbound eagerly into per-step stage-time tuples and cached.
_EAGER_STEPS = 256


class _Rows:
    """Row ``i`` of a flat times tensor, made on demand: a tuple of ``s`` 0-dim views
    (``s=None``: the ``i``-th 0-dim view itself)."""

    __slots__ = ("times", "s")

    def __init__(self, times: torch.Tensor, s):
        self.times, self.s = times, s

    def __len__(self) -> int:
        return self.times.shape[0] // (self.s or 1)

    def __getitem__(self, i: int):
        if self.s is None:
            return self.times[i]
        return self.times[i * self.s : (i + 1) * self.s].unbind(0)


def _fixed(field, y0, t, method: AbstractSolver, cfg: LoopConfig, stats: Stats) -> Outcome:
    plan = fixed_grid(field, y0, t, method, cfg)
    if isinstance(plan, Outcome):
        return plan
    tl, track = plan[0], plan[5]
    every = cfg.step_size is None and cfg.grid_constructor is None  # the grid is t itself
    if not track and cfg.on_accept is None and (every or len(tl) == 2) and getattr(method, "plain_step", False):
        return _fixed_plain(field, y0, method, cfg, stats, plan[1], plan[2], plan[3], every)
    return _fixed_loop(field, y0, t, method, cfg, stats, *plan)


def _fixed_plain(field, y0, method, cfg: LoopConfig, stats: Stats, gl, hs, step_ts, every: bool) -> Outcome:
    """The fixed loop when every output time is a grid time (``every``: each grid time;
    else only the last), no time is tracked and nothing runs per accepted step: the common
    ResNet forward. Same operations as :func:`_fixed_loop`, without its per-step output
    search, interpolation and callbacks; a one-stage method's step is inlined, and only the
    current state stays alive between steps (as in a hand-written ``y = y + h * f(y)``).
    """
    n = len(gl) - 1
    if cfg.record is not None:
        cfg.record.extend(gl)
    outs = [y0]
    y = y0
    c = method.single_stage_weight
    if c is not None:  # y1 = y0 + (h*c) f(t0, y0): lincomb's fused add (a plain add when h*c == 1, the same bits)
        k = field(step_ts[0][0], y)  # the first evaluation goes through the field (VectorField checks it)
        y = y + k if hs[0] * c == 1.0 else torch.add(y, k, alpha=hs[0] * c)
        k = None
        if every:
            outs.append(y)
        # after its first output is checked, a VectorField's user function is called directly,
        # doing what VectorField.__call__ does then: count, call, check the shape
        func = field.checked_func() if isinstance(field, VectorField) else None
        call, shape, i = (field if func is None else func), y0.shape, 0
        try:
            for i in range(1, n):
                k = call(step_ts[i][0], y)
                if func is not None and (not isinstance(k, torch.Tensor) or k.shape != shape):
                    field._check(k, y)
                a = hs[i] * c
                y = y + k if a == 1.0 else torch.add(y, k, alpha=a)
                k = None
                if every:
                    outs.append(y)
        finally:  # the calls made, the one that raised included (as VectorField counts them)
            if func is not None:
                field.stats.n_f_evals += i
    else:
        f0 = None
        for i in range(n):
            ts = step_ts[i]
            if f0 is None:
                f0 = field(ts[0], y)
            res = method.step(field, ts, y, hs[i], f0)
            y = res.y1
            f0 = None if cfg.perturb else res.f1
            res = None
            if every:
                outs.append(y)
    if not every:
        outs.append(y)
    stats.n_steps += n
    stats.n_accepted += n
    if c is not None and func is not None and not every and n <= _EAGER_STEPS:
        return Outcome(outs, plain=(func, step_ts, hs, c, n))
    return Outcome(outs)


def fixed_grid(field, y0, t, method: AbstractSolver, cfg: LoopConfig):
    """The fixed loop's plan ``(tl, gl, hs, step_ts, ends, track)``, or an :class:`Outcome`
    when the grid has more than ``max_num_steps`` steps.

    ``tl``/``gl``: output times and grid as floats; ``hs``: step sizes; ``step_ts[i]``: the
    stage times of step ``i`` (0-dim tensors); ``ends``: the grid as tensors; ``track``:
    whether the times carry gradients with respect to ``t``. Built on the host once, cached
    for repeated solves on the same untracked ``t``.
    """
    tl = host_times(cfg, t)
    if tl is None:
        tl = t.tolist()
    cs = method.stage_c
    s = len(cs)
    key = None
    if not compiling() and cfg.grid_constructor is None and not t.requires_grad and not torch.is_inference_mode_enabled():
        key = (tuple(tl), cfg.step_size, cs, cfg.perturb, t.dtype, field_time_dtype(field, t), y0.device)
        hit = _GRID_CACHE.get(key)
        if hit is not None:
            gl, hs, step_ts, ends = hit
            n = len(gl) - 1
            if n > cfg.max_num_steps:
                return Outcome([y0], Status.MAX_STEPS, tl[0], f"the grid has {n} steps but max_num_steps={cfg.max_num_steps}")
            return tl, gl, hs, step_ts, ends, False
    if cfg.step_size is not None and cfg.grid_constructor is None:
        # refuse a grid longer than max_num_steps before building it (a tiny step_size)
        n_est = max(1, math.ceil((tl[-1] - tl[0]) / cfg.step_size - 1e-9))
        if n_est > cfg.max_num_steps:
            return Outcome([y0], Status.MAX_STEPS, tl[0], f"the grid has {n_est} steps but max_num_steps={cfg.max_num_steps}")
    grid = _custom_grid(field, y0, t, cfg) if cfg.grid_constructor is not None else None
    track = t.requires_grad or (grid is not None and grid.requires_grad)
    gl = grid.detach().tolist() if grid is not None else _host_grid(tl, cfg)
    n = len(gl) - 1
    if n > cfg.max_num_steps:
        return Outcome([y0], Status.MAX_STEPS, tl[0], f"the grid has {n} steps but max_num_steps={cfg.max_num_steps}")
    # Stage times for every step, built on the host and sent in one tensor (no per-step work).
    flat = []
    for a, b in zip(gl, gl[1:]):
        for cj in cs:
            if cfg.perturb and cj == 0.0:
                flat.append(math.nextafter(a, b))
            elif cfg.perturb and cj == 1.0:
                flat.append(math.nextafter(b, a))
            else:
                flat.append(a + cj * (b - a))
    times = torch.tensor(flat + gl, dtype=torch.float64, device=y0.device)
    if track:
        g = grid if grid is not None else _tracked_grid(t, gl, cfg.step_size is None)
        hs_t = g[1:] - g[:-1]
        c_t = torch.tensor(cs, dtype=torch.float64, device=y0.device)
        moving = torch.cat([(g[:-1, None] + hs_t[:, None] * c_t).reshape(-1), g])  # (n*s + n+1,)
        times = times + (moving - moving.detach())
        hs = hs_t.unbind(0)
    else:
        hs = [b - a for a, b in zip(gl, gl[1:])]
    # stage times in the field's time dtype (cast once here, not per call); grid ends in t's
    stage_t, end_t = times[: n * s].to(field_time_dtype(field, t)), times[n * s :].to(t.dtype)
    if n > _EAGER_STEPS:
        # Long grids: per-step views made on demand, so no per-step tensor objects stay
        # alive for the whole solve (this is what keeps the adjoint's memory flat in steps).
        return tl, gl, hs, _Rows(stage_t, s), _Rows(end_t, None), track
    stage_t = stage_t.unbind(0)
    ends = end_t.unbind(0)
    step_ts = [stage_t[i * s : (i + 1) * s] for i in range(n)]
    if key is not None and not track:
        if len(_GRID_CACHE) >= _GRID_CACHE_SIZE:
            _GRID_CACHE.clear()
        _GRID_CACHE[key] = (gl, hs, step_ts, ends)
    return tl, gl, hs, step_ts, ends, track


def _fixed_loop(field, y0, t, method, cfg, stats, tl, gl, hs, step_ts, ends, track) -> Outcome:
    n = len(gl) - 1
    cubic = cfg.interp == "cubic"
    outs = [y0]
    if cfg.record is not None:
        cfg.record.extend(gl)
    j, y, f0 = 1, y0, None
    for i in range(n):
        ts = step_ts[i]
        if f0 is None:
            f0 = field(ts[0], y)
        res = method.step(field, ts, y, hs[i], f0)
        if not res.ok:
            stats.n_steps += i + 1
            stats.n_accepted += i
            return Outcome(outs, Status.ROOT_FINDER, gl[i], _root_detail(res, i, show_t(cfg, gl[i])))
        f1 = res.f1
        t1 = gl[i + 1]
        while j < len(tl) and tl[j] <= t1:
            if tl[j] == t1:
                outs.append(res.y1)
            else:
                theta = (t[j] - ends[i]) / hs[i] if track else (tl[j] - gl[i]) / hs[i]
                if cubic:
                    if f1 is None:
                        f1 = field(ends[i + 1], res.y1)
                    outs.append(method_hermite(res, theta, f1))
                elif track or y.is_complex():
                    outs.append(y + theta * (res.y1 - y))
                else:
                    outs.append(torch.lerp(y, res.y1, theta))
            j += 1
        y = res.y1
        f0 = None if cfg.perturb else f1
        if cfg.on_accept is not None and cfg.on_accept(res, gl[i], t1, _f1_getter(field, ends[i + 1], res, f1)):
            stats.n_steps += i + 1
            stats.n_accepted += i + 1
            return Outcome(outs)
    stats.n_steps += n
    stats.n_accepted += n
    return Outcome(outs)


def _tracked_grid(t: torch.Tensor, gl: list, from_t: bool) -> torch.Tensor:
    """The grid as a function of ``t`` (for gradients with respect to time).

    ``from_t``: the grid is ``t`` itself. Otherwise it is ``t[0] + i*step_size`` for the
    inner points (moving with ``t[0]`` only) and ``t[-1]`` at the end.
    """
    t64 = t.to(torch.float64)
    if from_t:
        return t64
    start, end = t64[0], t64[-1]
    offs = torch.tensor([g - gl[0] for g in gl[1:-1]], dtype=torch.float64, device=t.device)
    return torch.cat([start.reshape(1), start + offs, end.reshape(1)])


def _f1_getter(field, t1, res: StepResult, f1):
    """``get_f1`` for the fixed loop's ``on_accept``: ``f(t1, y1)``, evaluated once if needed."""
    cache = [f1 if f1 is not None else res.f1]

    def get_f1():
        if cache[0] is None:
            cache[0] = field(t1, res.y1)
        return cache[0]

    return get_f1


def method_hermite(res: StepResult, theta, f1):
    from ._base import hermite

    th = theta.reshape(1) if isinstance(theta, torch.Tensor) else torch.tensor([theta], dtype=torch.float64, device=res.y0.device)
    return hermite(res, th, f1)[0]


def _root_detail(res: StepResult, i: int, t0: float) -> str:
    extra = describe_info(res.info)
    return f"the implicit solve of step {i} (t={t0:.6g}) did not converge" + (f" ({extra})" if extra else "")


# ----------------------------------------------------------------------------- adaptive


def _adaptive(field, y0, t, method: AbstractSolver, cfg: LoopConfig, stats: Stats) -> Outcome:
    tl = host_times(cfg, t)  # the API's floats when it has them: no read of t
    if tl is None:
        tl = t.detach().to(torch.float64).tolist()
    t0, tend = tl[0], tl[-1]
    dev, tdt, ftd = y0.device, t.dtype, field_time_dtype(field, t)
    track = t.requires_grad
    norm = cfg.norm or rms_norm
    rtol, atol = cfg.rtol, cfg.atol
    cs = method.stage_c
    c_t = torch.tensor(cs, dtype=torch.float64, device=dev) if track else None
    direct_t = ftd in (torch.float32, torch.float64)  # stage times made in ftd at once (one rounding either way)

    def make_t(x: float) -> torch.Tensor:
        return torch.tensor(x, dtype=tdt, device=dev)

    T_n = t[0].to(torch.float64) if track else None
    T_end = t[-1].to(torch.float64) if track else None
    f0 = field(t[0] if track else make_t(t0), y0)
    if cfg.first_step is not None:
        h = float(cfg.first_step)
    else:
        n0 = stats.n_f_evals
        h = initial_step(field, t0, y0, f0, min(method.order, method.error_order), rtol, atol, norm, make_t, tend - t0, t_shown=show_t(cfg, t0))
        stats.n_initial_step_evals += stats.n_f_evals - n0
    h = max(min(h, cfg.max_step), cfg.min_step)
    ctrl = cfg.controller
    ctrl.reset(min(method.order, method.error_order))
    stops = sorted({float(v) for v in (*cfg.step_t, *cfg.jump_t) if t0 < float(v) < tend}) + [tend]
    jumps = {float(v) for v in cfg.jump_t}
    si = 0
    tn, y = t0, y0
    outs = [y0]
    cstep, tnorm = None, None
    if cfg.compile_step is not None and not track:  # (times that carry gradients: the eager step)
        from ._compiled_step import compiled_step, traced_norm

        tnorm = traced_norm(cfg.norm, per_sample=False)
        cstep = compiled_step(method, field, tnorm, cfg.compile_step)
    if cfg.record is not None:
        cfg.record.append(t0)
    j = 1
    after_jump = False
    last_nonfinite = False
    abs_y = None
    while tn < tend:
        if stats.n_steps >= cfg.max_num_steps:
            return Outcome(outs, Status.MAX_STEPS, tn, f"{stats.n_steps} steps taken, stopped at t={show_t(cfg, tn):.6g}")
        stop = stops[si]
        h = min(h, cfg.max_step)
        land = tn + h >= stop
        t1 = stop if land else tn + h
        hstep = t1 - tn
        if hstep <= 0.0 or t1 == tn:
            st = Status.NON_FINITE if last_nonfinite else Status.STEP_SIZE_UNDERFLOW
            return Outcome(outs, st, tn, f"the step size fell to {h:.3g} at t={show_t(cfg, tn):.6g}")
        # stage times (host floats -> one small tensor); nudged off a jump on either side
        times = [tn + cj * hstep for cj in cs]
        if land and stop in jumps:
            times = [nudge(t1, tn, ftd) if cj == 1.0 else x for cj, x in zip(cs, times)]
        if after_jump:
            times = [nudge(tn, t1, ftd) if cj == 0.0 else x for cj, x in zip(cs, times)]
        if cstep is not None:
            if f0 is None:
                f0 = field(torch.tensor(times[0], dtype=ftd, device=dev), y)
            y1c, f1c, ksc, r, ts = cstep(torch.tensor(times + [hstep], dtype=torch.float64, device=dev), y, None, f0, rtol, atol)
            res = StepResult(y, y1c, f0, f1c, None, list(ksc), hstep, ts, func=field)
            hh = hstep
        elif track:
            ts_t = torch.tensor(times, dtype=torch.float64, device=dev)
            T1 = T_end if (land and stop == tend) else T_n + hstep
            hh = T1 - T_n
            ts_t = ts_t + ((T_n - T_n.detach()) + (hh - hh.detach()) * c_t)
            ts = ts_t.to(ftd).unbind(0)
        else:
            hh = hstep
            # float32/float64: made in the field's dtype at once (the same single rounding
            # of each float as the cast from float64); half precision goes through float64
            ts = (torch.tensor(times, dtype=ftd, device=dev) if direct_t else torch.tensor(times, dtype=torch.float64, device=dev).to(ftd)).unbind(0)
        if cstep is None:
            if f0 is None:
                f0 = field(ts[0], y)
            res = method.step(field, ts, y, hh, f0)
        stats.n_steps += 1
        if cstep is not None:
            with torch.no_grad():
                ratio = float(r if tnorm is not None else norm(r))  # the one sync per step
            last_nonfinite = not math.isfinite(ratio)
            abs_y1 = None  # (the eager step's cache of |y1|)
        elif not res.ok:
            ratio = math.inf
            last_nonfinite = False
        else:
            with torch.no_grad():
                if abs_y is None:
                    abs_y = _abs32(y)
                abs_y1 = _abs32(res.y1)
                scale = torch.maximum(abs_y, abs_y1).mul_(rtol).add_(atol) if not isinstance(rtol, torch.Tensor) else atol + rtol * torch.maximum(abs_y, abs_y1)
                ratio = float(method.error_ratio(res, scale, norm))  # the one sync per step
            last_nonfinite = not math.isfinite(ratio)
        accepted = math.isfinite(ratio) and ctrl.accept(ratio)
        if accepted:
            stats.n_accepted += 1
            if cfg.record is not None:
                cfg.record.append(t1)
            cache = {}

            def get_f1(res=res, ts=ts, cache=cache):
                if res.f1 is not None:
                    return res.f1
                if "f1" not in cache:
                    t_end = ts[-1] if cs[-1] == 1.0 else (make_t(res_t1) if not track else (T1).to(tdt))
                    cache["f1"] = field(t_end, res.y1)
                return cache["f1"]

            res_t1 = t1
            k0 = j
            while j < len(tl) and tl[j] < t1:
                j += 1
            if j > k0:
                if track:
                    outs.extend(method.interpolate(res, (t[k0:j].to(torch.float64) - T_n) / hh, get_f1).unbind(0))
                else:
                    outs.extend(method.interpolate_at(res, [(x - tn) / hstep for x in tl[k0:j]], get_f1).unbind(0))
            if j < len(tl) and tl[j] == t1:
                outs.append(res.y1)
                j += 1
            if cfg.on_accept is not None and cfg.on_accept(res, tn, t1, get_f1):
                return Outcome(outs)
            tn, y, abs_y = t1, res.y1, abs_y1
            if track:
                T_n = T1
            jumped = land and stop in jumps
            f0 = None if jumped else (res.f1 if res.f1 is not None else cache.get("f1"))
            after_jump = jumped
            if land:
                si += 1
        else:
            stats.n_rejected += 1
        h_new = ctrl.propose(hstep, ratio, accepted)
        if accepted and land and hstep < h:
            # the step was clipped to land on an output/step/jump time: its small size says
            # nothing about the dynamics, so restart from the step size it was cut from
            h_new = max(h_new, h)
        if h_new < cfg.min_step:
            if not accepted and hstep <= cfg.min_step:
                st = Status.NON_FINITE if last_nonfinite else Status.STEP_SIZE_UNDERFLOW
                return Outcome(outs, st, tn, f"a step of min_step={cfg.min_step:.3g} was rejected at t={show_t(cfg, tn):.6g}")
            h_new = cfg.min_step
        if not accepted and (tn + h_new == tn or (tn + h_new) - tn >= hstep):
            st = Status.NON_FINITE if last_nonfinite else Status.STEP_SIZE_UNDERFLOW
            return Outcome(outs, st, tn, f"the step size fell to {h_new:.3g} at t={show_t(cfg, tn):.6g}")
        h = h_new
    return Outcome(outs, h_next=h)
