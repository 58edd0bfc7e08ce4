"""The two public doors onto the engine: ``solve`` (object API) and ``odeint``
(torchdiffeq-compatible). Both build a :class:`Problem` and hand it to a gradient mode."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Optional

import torch

from ._base import AbstractSolver
from ._controller import AbstractController, IController, PIController
from ._integrate import LoopConfig, Outcome, integrate, max_of_rms, rms_norm
from ._compile import compiling, traceable_fixed
from ._compiled_step import backend_of, supports_compiled_step
from ._grids import check_t_batched
from ._collocation import AbstractCollocation
from ._implicit import _ESDIRKMixin
from ._problem import VectorField, adaptive_tols, nonfinite_y0, check_t, check_tol, check_y0, split_state, unflatten_outputs
from ._registry import get_method
from . import _plans
from ._replay import PlainReplay
from ._solution import Solution, Stats, Status, exception_for

__all__ = ["solve", "odeint", "Problem", "GRADIENT_MODES", "register_gradient_mode"]

_FIXED_OPTIONS = {"step_size", "grid_constructor", "perturb", "interp"}
_ADAPTIVE_OPTIONS = {"first_step", "min_step", "max_step", "norm", "jump_t", "step_t", "safety", "ifactor", "dfactor", "controller", "pcoeff", "icoeff", "dtype", "compile_step"}
_COMMON_OPTIONS = {"max_num_steps", "check_finite", "time_dtype"}


@dataclasses.dataclass
class Problem:
    """Everything a gradient mode needs to run (and re-run) a solve."""

    func: Callable
    field: VectorField
    y0: torch.Tensor  # flat if the state is a tuple
    t: torch.Tensor  # increasing (negated if the user's t decreases)
    method: AbstractSolver
    cfg: LoopConfig
    stats: Stats
    shapes: Optional[list]
    reverse: bool
    params: Optional[list]
    rtol: object
    atol: object
    options: dict
    #: Keyword options of the gradient mode (``solve(..., gradient_options=...)``).
    gradient_options: dict = dataclasses.field(default_factory=dict)

    def run(self, y0=None, t=None, field=None) -> Outcome:
        return integrate(field or self.field, self.y0 if y0 is None else y0, self.t if t is None else t, self.method, self.cfg, self.stats)


GRADIENT_MODES: Dict[str, Callable[[Problem], Outcome]] = {}
"""``solve(..., gradient=name)`` name -> runner (filled by :func:`register_gradient_mode`)."""


def register_gradient_mode(name: str, runner: Callable[[Problem], Outcome]) -> None:
    """Make ``solve(..., gradient=name)`` call ``runner(problem) -> Outcome``."""
    if not isinstance(name, str) or not name:
        exc = ValueError if isinstance(name, str) else TypeError
        raise exc(f"register_gradient_mode: `name` must be a non-empty string, got {name!r}")
    if not callable(runner):
        raise TypeError(f"register_gradient_mode: `runner` must be callable as runner(problem) -> Outcome, got {runner!r}")
    GRADIENT_MODES[name] = runner


def _direct(prob: "Problem") -> Outcome:
    """Backpropagation through the steps: the plain run, recorded by autograd."""
    if prob.gradient_options:
        raise ValueError(f"gradient='direct' takes no `gradient_options` (got {sorted(prob.gradient_options)}); remove them or pick another `gradient`")
    return prob.run()


register_gradient_mode("direct", _direct)


def _as_float(name, v, *, positive=False, allow_inf=False):
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"option `{name}` must be a number, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v) or (not allow_inf and math.isinf(v)) or v < 0 or (positive and v == 0):
        raise ValueError(f"option `{name}` must be {'positive' if positive else 'non-negative'}{'' if allow_inf else ' and finite'}, got {v}")
    return v


def _times(name, v, reverse) -> tuple:
    if v is None:
        return ()
    vals = v.detach().reshape(-1).tolist() if isinstance(v, torch.Tensor) else [float(x) for x in v]
    return tuple(-x for x in vals) if reverse else tuple(vals)


_ALLOWED = {True: frozenset(_COMMON_OPTIONS | _ADAPTIVE_OPTIONS), False: frozenset(_COMMON_OPTIONS | _FIXED_OPTIONS)}


def _build_config(method: AbstractSolver, options: dict, rtol, atol, shapes, reverse: bool, y0) -> LoopConfig:
    cfg = LoopConfig(rtol=rtol, atol=atol, reverse=reverse)
    allowed = _ALLOWED[bool(method.adaptive)]
    for key in options:
        if key not in allowed:
            if key in _FIXED_OPTIONS | _ADAPTIVE_OPTIONS:
                kind = "adaptive" if key in _ADAPTIVE_OPTIONS else "fixed-step"
                raise ValueError(f"option `{key}` applies only to {kind} methods, and {method.name!r} is not one; remove it or change `method`")
            raise ValueError(
                f"unknown option `{key}` for method {method.name!r}; valid options: "
                + ", ".join(sorted(allowed | set(method.option_names)))
            )
    o = options
    if "step_size" in o and o["step_size"] is not None:
        cfg.step_size = _as_float("step_size", o["step_size"], positive=True)
    if o.get("grid_constructor") is not None:
        if cfg.step_size is not None:
            raise ValueError("pass either `step_size` or `grid_constructor`, not both")
        gc = o["grid_constructor"]
        if not callable(gc):
            raise TypeError("option `grid_constructor` must be callable as grid_constructor(func, y0, t)")
        cfg.grid_constructor = (lambda f, y, tt: -gc(f, y, -tt).flip(0) if False else -gc(f, y, -tt)) if reverse else gc
    cfg.perturb = bool(o.get("perturb", False))
    interp = o.get("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise ValueError(f"option `interp` must be 'linear' or 'cubic', got {interp!r}")
    cfg.interp = interp
    if o.get("first_step") is not None:
        cfg.first_step = _as_float("first_step", o["first_step"], positive=True)
    if "min_step" in o or "max_step" in o:  # absent: LoopConfig's defaults 0 and inf
        cfg.min_step = _as_float("min_step", o.get("min_step", 0.0))
        cfg.max_step = _as_float("max_step", o.get("max_step", math.inf), positive=True, allow_inf=True)
        if cfg.min_step > cfg.max_step:
            raise ValueError(f"`min_step` ({cfg.min_step}) must not exceed `max_step` ({cfg.max_step})")
    if "max_num_steps" in o:
        mns = o["max_num_steps"]
        if isinstance(mns, bool) or not isinstance(mns, int) or mns < 1:
            raise ValueError(f"option `max_num_steps` must be a positive int, got {mns!r}")
        cfg.max_num_steps = mns
    if "step_t" in o:
        cfg.step_t = _times("step_t", o["step_t"], reverse)
    if "jump_t" in o:
        cfg.jump_t = _times("jump_t", o["jump_t"], reverse)
    cfg.check_finite = bool(o.get("check_finite", True))
    norm = o.get("norm")
    if norm is not None and not callable(norm):
        raise TypeError("option `norm` must be callable as norm(tensor) -> scalar tensor")
    if shapes is not None:
        user = norm
        if user is None:
            cfg.norm = lambda x: max_of_rms(split_state(x, shapes))
            cfg.norm.default_parts = True  # (the compiled step computes this norm itself)
        else:
            cfg.norm = lambda x: user(split_state(x, shapes))
    else:
        cfg.norm = norm or rms_norm
    ctrl = o.get("controller")
    if not method.adaptive:
        return cfg
    cs = backend_of(o.get("compile_step"))
    if cs is not None:
        if not supports_compiled_step(method):
            raise ValueError(
                f"option `compile_step` compiles the step of an adaptive explicit Runge-Kutta method (e.g. 'dopri5', 'tsit5', "
                f"'bosh3', 'fehlberg2', 'adaptive_heun'; not 'dopri8', whose error estimate is special); {method.name!r} is not one: remove `compile_step` or change `method`"
            )
        cfg.compile_step = cs
    cfg.rtol, cfg.atol = adaptive_tols(rtol, atol, y0)
    if "dtype" in o:
        _check_control_dtype(o["dtype"], y0)
    if isinstance(ctrl, AbstractController):
        cfg.controller = ctrl
    elif ctrl in (None, "i", "pi"):
        kw = {k: _as_float(k, o[k], positive=True) for k in ("safety", "ifactor", "dfactor") if k in o}
        if ctrl == "pi" or "pcoeff" in o or "icoeff" in o:
            for k in ("pcoeff", "icoeff"):
                if k in o:
                    kw[k] = _as_float(k, o[k])
            cfg.controller = PIController(**kw)
        else:
            cfg.controller = IController(**kw)
    else:
        raise ValueError(f"option `controller` must be 'i', 'pi' or an AbstractController, got {ctrl!r}")
    return cfg


def _check_control_dtype(dtype, y0) -> None:
    """torchdiffeq's adaptive option ``dtype``: the dtype of time and step-size control,
    promoted with the state's real dtype. Control here is always float64, so float64 (the
    default) is honoured and a lower precision is refused rather than ignored."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"option `dtype` (the time/step-size dtype, as in torchdiffeq) must be a real floating torch.dtype such as torch.float64, got {dtype!r}")
    real = y0.real.dtype if y0.is_complex() else y0.dtype
    if torch.promote_types(dtype, real) != torch.float64:
        raise ValueError(
            f"option `dtype`={dtype} asks for step-size control in {torch.promote_types(dtype, real)}; odenet always controls "
            "time and step size in float64 (more precise, same cost). Remove `dtype` (or pass torch.float64); for the dtype of "
            "the `t` the vector field receives, see option `time_dtype`"
        )


def _check_batched_config(method: AbstractSolver, cfg: LoopConfig, options: dict) -> None:
    """Options that a per-sample grid does not support are refused by name."""
    if getattr(method, "integrate", None) is not None:  # multistep methods, wrappers (solvers._ownloop)
        raise ValueError(
            f"method {method.name!r} runs its own loop (a multistep method or a wrapper of another integrator) and "
            "does not run on a per-sample `t` of shape [B, T]; use a one-step method (e.g. 'dopri5', 'tsit5', 'rk4', "
            "'kvaerno5', 'radau5') or a shared 1-D `t`"
        )
    if method.implicit and not isinstance(method, (_ESDIRKMixin, AbstractCollocation)):
        raise ValueError(
            f"implicit method {method.name!r} does not run on a per-sample `t` of shape [B, T] yet; the ESDIRK and "
            "collocation methods do, and explicit methods; or use a shared 1-D `t`"
        )
    for key in ("step_t", "jump_t", "grid_constructor"):
        if options.get(key) is not None:
            raise ValueError(f"option `{key}` is not supported on a per-sample `t` of shape [B, T]; use a shared 1-D `t`, or remove `{key}`")
    if cfg.interp != "linear" and cfg.step_size is not None:
        raise ValueError("option interp='cubic' is not supported on a per-sample `t`; use interp='linear' or drop `step_size` so the steps land on the row's times")
    if method.adaptive and not getattr(cfg.controller, "batched", False):
        raise ValueError(
            f"the controller {type(cfg.controller).__name__} has no per-sample step-size control (`propose_batch`), "
            "which a per-sample `t` needs; use controller='i' or 'pi', or implement init_batch/propose_batch"
        )


def make_problem(func, y0, t, *, method, rtol, atol, options, params=None, traceable=False) -> Problem:
    """``traceable``: the caller runs the plain loop (``gradient="direct"``, no hooks), so
    under ``torch.compile`` a fixed-step solve on ``t``'s own intervals may skip every host
    read of ``t`` (:mod:`solvers._compile`)."""
    y0_flat, shapes = check_y0(y0)
    batched = isinstance(t, torch.Tensor) and t.ndim == 2
    options = dict(options or {})
    if isinstance(method, str) or not isinstance(method, AbstractSolver):  # (str first: the ABC check is slower)
        cls = get_method("dopri5" if method is None else method)
        method_opts = {k: options.pop(k) for k in list(options) if k in cls.option_names}
        method = cls(**method_opts)
    values = not (traceable and isinstance(t, torch.Tensor) and compiling() and traceable_fixed(method, options))
    tl = None
    if batched:
        if shapes is not None:
            raise ValueError("a per-sample `t` of shape [B, T] needs a tensor `y0` of shape [B, ...]; concatenate the parts of a tuple state along their last dimension")
        t, _, reverse = check_t_batched(t, y0_flat, values=values)
    else:
        t, tl = check_t(t, y0_flat, values=values)
        reverse = tl is not None and len(tl) > 1 and tl[1] < tl[0]
    rtol = check_tol("rtol", rtol, y0_flat, shapes)
    atol = check_tol("atol", atol, y0_flat, shapes)
    stats = Stats()
    field = VectorField(func, y0_flat, shapes, stats, reverse=reverse, tols=(rtol, atol), params=params, time_dtype=options.get("time_dtype"))
    cfg = _build_config(method, options, rtol, atol, shapes, reverse, y0_flat)
    if batched:
        _check_batched_config(method, cfg, options)
    tf = -t if reverse else t
    if tl is not None:  # the loop reads the times from here instead of from the device
        cfg.host_t = (tf, [-v for v in tl] if reverse else tl)
    return Problem(func, field, y0_flat, tf, method, cfg, stats, shapes, reverse, params, rtol, atol, options)


def solve(func: Callable, y0, t, *, method="dopri5", rtol=1e-7, atol=1e-9, options: Optional[dict] = None, gradient: str = "direct", raise_on_failure: bool = True, params=None, gradient_options: Optional[dict] = None, events=None, dense: bool = False) -> Solution:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0`` and return a :class:`Solution`.

    Parameters
    ----------
    func : callable
        ``func(t, y)`` returning ``dy/dt`` shaped like ``y`` (a tuple for tuple states).
        ``t`` arrives as a 0-dim tensor (``[B]`` on a per-sample grid) in the state's real
        dtype, as in torchdiffeq; ``options={"time_dtype": torch.float64}`` hands it in
        float64 instead. Step-size control runs in float64 either way.
    y0 : Tensor or tuple of Tensor
        Initial state, any shape; float32/float64/complex64/complex128.
    t : Tensor
        1-D strictly increasing or decreasing output times (float64 recommended).
    method : str or AbstractSolver
        A name from ``solvers.METHODS`` or a configured method instance.
    rtol, atol : float or Tensor
        Tolerances of adaptive methods (per component if tensors).
    options : dict, optional
        Loop options (``step_size``, ``first_step``, ``max_num_steps``, ``time_dtype``, ...) and the method's
        own options (e.g. ``root_finder`` for implicit methods). Unknown keys raise.
    gradient : {"direct", "adjoint", "checkpoint"}
        How gradients flow: backprop through the steps, the continuous adjoint, or the
        exact discrete gradient with recomputation between checkpoints.
    raise_on_failure : bool
        If True (default) a numerical failure raises a :class:`SolverError` subclass;
        otherwise the partial solution is returned with its ``status``.
    params : sequence of Tensor, optional
        Parameters of ``func`` for gradient modes that need them (adjoint); defaults to
        ``func.parameters()`` when ``func`` has it.
    gradient_options : dict, optional
        Options of the gradient mode: for ``"adjoint"`` the backward solve's ``rtol``,
        ``atol``, ``method`` and ``options`` (e.g. ``{"norm": "seminorm"}``); for
        ``"checkpoint"`` the number of ``checkpoints``. See ``docs/gradients.md``.
    events : Event or callable, optional
        Locate zero crossings of ``fn(t, y)`` (per sample for a ``[B]`` output) on the
        method's dense output; terminal events stop their sample. Sets ``sol.event_t``,
        ``sol.event_y``, ``sol.event_mask``. See ``docs/events.md``.
    dense : bool
        Keep every step's interpolant, for ``sol.evaluate(t)`` anywhere in the solved span.

    Returns
    -------
    Solution
    """
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"unknown gradient mode {gradient!r}; valid: {', '.join(sorted(GRADIENT_MODES))}")
    if not isinstance(raise_on_failure, bool):
        raise TypeError("`raise_on_failure` must be a bool")
    if gradient_options is not None and not isinstance(gradient_options, dict):
        raise TypeError(f"`gradient_options` must be a dict, got {type(gradient_options).__name__}")
    plain_call = (gradient == "direct" and events is None and dense is False and params is None
                  and gradient_options is None)
    if plain_call:  # a repeat of a plain fixed-step solve runs from its kept plan (solvers._plans)
        sol = _plans.lookup(func, y0, t, method, rtol, atol, options)
        if sol is not None:
            return sol
    prob = make_problem(func, y0, t, method=method, rtol=rtol, atol=atol, options=options, params=params,
                        traceable=gradient == "direct" and events is None and dense is False)
    prob.gradient_options = dict(gradient_options or {})
    hooks = None
    if events is not None or dense is not False:
        from ._solve_hooks import SolveHooks

        hooks = SolveHooks(prob, events, dense, gradient)
    outcome = GRADIENT_MODES[gradient](prob)
    sol = finish(prob, outcome, t if isinstance(t, torch.Tensor) else (-prob.t if prob.reverse else prob.t),
                 raise_on_failure)
    if (outcome.plain is not None and gradient == "direct" and hooks is None and not compiling()
            and not torch.is_inference_mode_enabled()):
        # the plain loop's grid, for re-running this solve on a new y0 (odenet.ODEBlock's fast
        # path; solvers._replay). Not made in inference mode: its stage times would be
        # inference tensors, which a later solve under autograd could not save.
        sol._replay = PlainReplay(*outcome.plain, prob.y0)
        if plain_call and sol.status.ok:
            _plans.store(func, y0, t, method, rtol, atol, options, outcome.plain, prob.cfg.check_finite)
    return sol if hooks is None else hooks.finish(sol)


def finish(prob: Problem, outcome: Outcome, t_user, raise_on_failure: bool) -> Solution:
    ys = outcome.ys if isinstance(outcome.ys, torch.Tensor) else (torch.stack(outcome.ys) if outcome.ys else prob.y0.new_empty((0, *prob.y0.shape)))
    n = ys.shape[0]
    if prob.shapes is not None:
        ys = unflatten_outputs(ys, prob.shapes)
    t_user = t_user.to(prob.y0.device) if isinstance(t_user, torch.Tensor) else prob.t
    t_fail = None if outcome.t_fail is None else (-outcome.t_fail if prob.reverse else outcome.t_fail)
    message = outcome.status.value
    if outcome.status is Status.NON_FINITE and n <= 1 and not bool(torch.isfinite(prob.y0).all()):
        raise nonfinite_y0()
    if not outcome.status.ok:
        message = f"{outcome.status.value} Failed at t={t_fail:.6g}: {outcome.detail}." if t_fail is not None else f"{outcome.status.value} {outcome.detail}"
    ts = t_user if t_user.shape[-1] == n else (t_user[:, :n] if t_user.ndim == 2 else t_user[:n])
    sol = Solution(ys, ts, outcome.status, prob.stats, message, t_fail)
    if not outcome.status.ok and raise_on_failure:
        raise exception_for(outcome.status)(message, t=t_fail, solution=sol)
    return sol


def odeint(func: Callable, y0, t, *, rtol=1e-7, atol=1e-9, method: Optional[str] = None, options: Optional[dict] = None, event_fn: Optional[Callable] = None):
    """Integrate ``dy/dt = func(t, y)``: a drop-in replacement for ``torchdiffeq.odeint``.

    Same signature, method names, option names and output (``[len(t), *y0.shape]``, or a
    tuple of such for tuple states). Numerical failure raises a :class:`SolverError`.
    With ``event_fn(t, y)`` (torchdiffeq's event mode) ``t`` holds ``[t0, t1]`` (only
    ``t0`` and the direction are used), the solve runs until ``event_fn`` crosses zero and
    ``(event_t, solution)`` is returned, ``solution`` holding the states at ``[t0, event_t]``.
    """
    if event_fn is not None:
        from ._event_odeint import odeint_until_event

        return odeint_until_event(func, y0, t, event_fn, rtol=rtol, atol=atol, method=method, options=options)
    return solve(func, y0, t, method="dopri5" if method is None else method, rtol=rtol, atol=atol, options=options).ys
