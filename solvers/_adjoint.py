"""The continuous adjoint: gradients of a solve from a second solve backwards in time.

The forward solve runs without building a graph. Backward integrates, from ``t[-1]`` to
``t[0]`` and one output interval at a time, the augmented system (in the user's time
``u``, whatever its direction)::

    dy/du   =  f(u, y)                      (the state, re-solved backwards)
    da/du   = -a^T df/dy(u, y)               (the adjoint, a(t_i) += dL/dy(t_i))
    dap/du  = -a^T df/dp(u, y)               (the parameter adjoint, from 0)

through the same engine as the forward solve, so every method (fixed-step too) works.
Memory is O(1) in the number of steps; the price is a second (larger) solve whose
error adds to the gradient error. Gradients with respect to the output times use the
exact identities ``dL/dt_i = <dL/dy_i, f(t_i, y_i)>`` (``i >= 1``) and
``dL/dt_0 = -<a(t_0^+), f(t_0, y_0)>``, so no ``a_t`` component is integrated.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch
from torch.autograd.function import once_differentiable

from ._api import Problem, make_problem, register_gradient_mode, solve
from ._base import AbstractSolver
from ._compiled_step import backend_of
from ._integrate import Outcome, rms_norm
from ._problem import nonfinite_y0, split_state, with_time_dtype
from ._solution import NonFiniteStateError, SolverError, exception_for
from ._adjoint_rebuild import check_rebuilt

__all__ = ["odeint_adjoint"]

_ADJOINT_KEYS = {"rtol", "atol", "method", "options", "rebuild_tol"}


def resolve_params(prob: Problem) -> tuple:
    """The parameters whose gradients the adjoint computes.

    Explicit ``params`` must all be tensors that require grad; the default
    ``func.parameters()`` is filtered to those that require grad; a callable without
    ``parameters`` and without ``params`` gets gradients for ``y0`` and ``t`` only.
    """
    if prob.params is not None:
        params = prob.params
        if isinstance(params, torch.Tensor):
            params = (params,)
        try:
            params = tuple(params)
        except TypeError:
            raise TypeError(f"`adjoint_params` must be a sequence of tensors, got {type(prob.params).__name__}") from None
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"`adjoint_params[{i}]` must be a torch.Tensor, got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(f"`adjoint_params[{i}]` does not require grad; drop it from `adjoint_params` or call .requires_grad_()")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("`adjoint_params` lists the same tensor twice; pass each parameter once")
        return params
    if callable(getattr(prob.func, "parameters", None)):
        return tuple(p for p in prob.func.parameters() if p.requires_grad)
    return ()


class _Backward:
    """Settings of the backward solve, resolved once in the forward pass."""

    def __init__(self, prob: Problem, params: tuple):
        opts = dict(prob.gradient_options)
        unknown = sorted(set(opts) - _ADJOINT_KEYS)
        if unknown:
            raise ValueError(f"unknown adjoint option(s) {unknown}; valid: {', '.join(sorted(_ADJOINT_KEYS))}")
        if prob.y0.is_complex():
            raise TypeError("gradient='adjoint' needs a real floating-point state; use gradient='direct' or 'checkpoint' for complex states")
        method = opts.get("method")
        options = opts.get("options")
        same = method is None or method is prob.method or (isinstance(method, str) and method == prob.method.name)
        if options is None:
            # (`compile_step` is the backward's own setting: self.compile_step below)
            fwd = {k: v for k, v in prob.options.items() if k != "compile_step"}
            if not same and fwd:
                raise ValueError(
                    "`adjoint_method` differs from `method` and `options` were given, so the adjoint's options "
                    "cannot be inferred: pass `adjoint_options` too"
                )
            options = {k: v for k, v in fwd.items() if k != "norm"} if same else {}
        elif not isinstance(options, dict):
            raise TypeError(f"`adjoint_options` must be a dict, got {type(options).__name__}")
        self.options = {k: v for k, v in options.items() if k != "compile_step"}
        #: the backward solve's compiled step (`adjoint_options`' own `compile_step` when it has one,
        #: else the forward's): used where the backward field is traceable (see _backward)
        self.compile_step = backend_of(options["compile_step"], "adjoint option `compile_step`") if "compile_step" in options \
            else prob.cfg.compile_step
        self.method = prob.method if same else method
        if isinstance(self.method, str):  # validated here, at the forward call, not in backward
            from ._registry import get_method

            get_method(self.method)
        elif not isinstance(self.method, AbstractSolver):
            raise TypeError(f"`adjoint_method` must be a method name or an AbstractSolver, got {type(self.method).__name__}")
        from ._problem import check_tol

        self.rtol = check_tol("adjoint_rtol", opts["rtol"], prob.y0, prob.shapes) if opts.get("rtol") is not None else prob.rtol
        self.atol = check_tol("adjoint_atol", opts["atol"], prob.y0, prob.shapes) if opts.get("atol") is not None else prob.atol
        self.params = params
        self.prob = prob
        if prob.t.ndim == 2:
            from ._adjoint_grids import check_batched_backward

            check_batched_backward(self)


def _aug_tol(tol, prob: Problem, n_params: tuple):
    """Tolerance of the augmented state: the state's for ``y`` and ``a``; the tightest for params."""
    if not isinstance(tol, torch.Tensor):
        return tol
    flat = tol.expand(prob.y0.shape).reshape(-1)  # (N,)
    n_p = sum(p.numel() for p in n_params)
    return torch.cat([flat, flat, flat.min().expand(n_p)])  # (2N + P,)


@contextlib.contextmanager
def backward_errors(where: str):
    """Failures raised inside a backward solve (not returned as a status) say that they
    happened in the backward pass, ``where`` (e.g. "integrating from t=1 to t=0")."""
    try:
        yield
    except SolverError as e:
        raise type(e)(f"{e} This happened in the backward (adjoint) pass, {where}.", t=e.t, solution=e.solution) from e
    except ValueError as e:
        if str(e) != str(nonfinite_y0()):
            raise
        raise NonFiniteStateError(f"the adjoint state is non-finite in the backward (adjoint) pass, {where}: the incoming gradients dL/dy are NaN or inf") from e


def _state_func(func: Callable, shapes, time_dtype=None) -> Callable:
    """``func`` on the engine's state layout (flat for tuple states), in the user's time
    (cast to ``time_dtype``, the forward solve's field time dtype, when given)."""
    if time_dtype is not None:
        func = with_time_dtype(func, time_dtype)
    if shapes is None:
        return func

    def flat(u, y):
        return torch.cat([v.reshape(-1) for v in func(u, split_state(y, shapes))])

    return flat


def _make_norm(spec, state_norm: Callable, shapes=None):
    """The backward solve's error norm over the augmented parts ``(y, a, *a_params)``
    (``shapes``: those of a tuple forward state, whose parts a custom norm receives)."""
    if spec == "seminorm":
        return lambda parts: torch.maximum(state_norm(parts[0]), state_norm(parts[1]))

    def mixed(parts):
        n = torch.maximum(state_norm(parts[0]), state_norm(parts[1]))
        for p in parts[2:]:
            n = torch.maximum(n, rms_norm(p))
        return n

    if spec is None:
        return mixed
    if callable(spec):
        return _torchdiffeq_norm(spec, shapes)
    raise ValueError(f"adjoint option `norm` must be 'seminorm', None or callable(parts) -> scalar, got {spec!r}")


def backward_norm(spec, prob, shapes_b) -> Callable:
    """The backward solve's ``cfg.norm`` on the flat augmented state.

    The default mixed norm (the largest RMS over ``y``, ``a`` and each parameter adjoint)
    with RMS state norms is one segmented reduction (five kernels whatever the number of
    parameters, instead of three per part); other norms split the state into its parts.
    """
    state_norm = prob.cfg.norm or rms_norm
    parts_norm = _make_norm(spec, state_norm, prob.shapes)
    if spec is None and state_norm is rms_norm and prob.shapes is None:
        sizes = [math.prod(s) for s in shapes_b]
        if all(sizes):
            return _FusedMixed(sizes, parts_norm, shapes_b)
    return lambda x: parts_norm(split_state(x, shapes_b))


class _FusedMixed:
    """``max_i rms(x_i)`` over consecutive segments of a flat real ``x``:
    ``sqrt(max_i(sum(x_i^2) / n_i))`` (equal to the per-part norm up to rounding)."""

    def __init__(self, sizes, parts_norm, shapes):
        self.sizes, self.parts_norm, self.shapes = sizes, parts_norm, shapes
        self.consts = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 1 or x.is_complex() or x.shape[0] != sum(self.sizes):
            return self.parts_norm(split_state(x, self.shapes))
        key = (x.device, x.dtype)
        c = self.consts.get(key)
        if c is None:
            c = self.consts[key] = (torch.tensor(self.sizes, device=x.device), torch.tensor([1.0 / n for n in self.sizes], dtype=x.dtype, device=x.device))
        return (torch.segment_reduce(x * x, "sum", lengths=c[0]) * c[1]).max().sqrt()


def _torchdiffeq_norm(user: Callable, shapes) -> Callable:
    """A custom adjoint norm called as torchdiffeq calls it: with one tuple
    ``(adj_t, y, adj_y, *adj_params)``, or ``(adj_t, *y_parts, *adj_y_parts, *adj_params)``
    for a tuple state. ``adj_t`` is torchdiffeq's time-adjoint component; odenet does not
    integrate it (``dL/dt`` comes from exact identities), so it is a 0-dim zero: what
    torchdiffeq holds there when ``t`` does not require grad."""

    def norm(parts):
        y, a, *a_p = parts
        adj_t = y.new_zeros(())
        if shapes is None:
            return user((adj_t, y, a, *a_p))
        return user((adj_t, *split_state(y, shapes), *split_state(a, shapes), *a_p))

    return norm


class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, box, y0, t, *params):
        prob = box["prob"]
        outcome = prob.run(y0=y0.detach(), t=t.detach())
        ys = outcome.ys if isinstance(outcome.ys, torch.Tensor) else torch.stack(outcome.ys)
        box["outcome"] = outcome
        ctx.box = box
        ctx.save_for_backward(ys, t)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys):
        ys, t_int = ctx.saved_tensors
        box = ctx.box
        g_y0, g_t, g_params = _backward(box["bwd"], ys, t_int, grad_ys, ctx.needs_input_grad[2])
        return (None, g_y0, g_t, *g_params)


class _Augmented:
    """The backward vector field ``(y, a, *a_p) -> (f, -a^T df/dy, *(-a^T df/dp))``.

    Explicit backward methods only evaluate it: the state is detached and the VJP builds
    no graph. Implicit methods also differentiate it (the root finder's Jacobian, or its
    JVPs, of the augmented field); with ``differentiable`` set and grad mode on at the
    call (the root finder turns it on only for that), the VJP is taken with
    ``create_graph=True`` on the caller's ``y`` and ``a``, so ``d(a^T df/dy)/dy`` (the
    field's second derivatives) and ``d/da`` reach the Jacobian instead of zeros.
    """

    def __init__(self, f: Callable, params: tuple, dtype: torch.dtype):
        self.f, self.params, self.dtype = f, params, dtype
        self.differentiable = False

    def __call__(self, u, z):
        y, a = z[0], z[1]
        params = self.params
        graph = self.differentiable and torch.is_grad_enabled()
        with torch.enable_grad():
            yv = y if graph and y.requires_grad else y.detach().requires_grad_(True)
            fy = self.f(u, yv)
            if fy.requires_grad:
                # the VJP with -a is -(a^T df/dy, a^T df/dp) exactly (a VJP is linear in its
                # cotangent and rounding is symmetric in sign): one negation of `a` instead
                # of one per output part
                grads = torch.autograd.grad(fy, (yv, *params), -a, create_graph=graph, allow_unused=True)
            else:
                grads = (None,) * (1 + len(params))
        g_y = torch.zeros_like(y) if grads[0] is None else grads[0]
        g_p = [torch.zeros(p.shape, dtype=self.dtype, device=y.device) if g is None else g.to(self.dtype) for p, g in zip(params, grads[1:])]
        return (fy if graph else fy.detach(), g_y, *g_p)


def _backward(bw: _Backward, ys: torch.Tensor, t_int: torch.Tensor, grad_ys: torch.Tensor, need_t: bool):
    """Integrate the augmented system from the last reached output time to ``t[0]``."""
    if t_int.ndim == 2:
        from ._adjoint_grids import backward_batched

        return backward_batched(bw, ys, t_int, grad_ys, need_t)
    prob = bw.prob
    params = bw.params
    n = ys.shape[0]
    t_user = (-t_int if prob.reverse else t_int).detach()[:n]
    state = prob.y0.detach()
    dtype = state.dtype
    f = _state_func(prob.func, prob.shapes, prob.field.time_dtype)
    stats = prob.stats
    aug = _Augmented(f, params, dtype)

    grad_ys = grad_ys.to(dtype)
    a = grad_ys[n - 1]
    a_p = [torch.zeros(p.shape, dtype=dtype, device=state.device) for p in params]
    g_t = torch.zeros(n, dtype=t_int.dtype, device=t_int.device) if need_t else None
    extra_f = 0
    with torch.no_grad():
        if n > 1:
            t_back = t_user.flip(0)
            z0 = (ys[n - 1], a, *a_p)
            opts = dict(bw.options)
            norm_spec = opts.pop("norm", None)
            field_b = aug
            if bw.compile_step is not None and prob.shapes is None:
                from ._compiled_step import supports_compiled_step, traced_augmented
                from ._registry import get_method

                traced = traced_augmented(prob.func, params) if supports_compiled_step(bw.method if not isinstance(bw.method, str) else get_method(bw.method)) else None
                if traced is not None:  # the backward's steps compiled too
                    field_b, opts["compile_step"] = traced, bw.compile_step
            bprob = make_problem(field_b, z0, t_back, method=bw.method, rtol=_aug_tol(bw.rtol, prob, params), atol=_aug_tol(bw.atol, prob, params), options=opts)
            bprob.field.time_dtype = prob.field.time_dtype
            aug.differentiable = bool(getattr(bprob.method, "implicit", False))
            bprob.cfg.norm = backward_norm(norm_spec, prob, bprob.shapes)
            for k in range(n - 1):
                i = n - 1 - k  # integrate t_i -> t_{i-1}
                if need_t:
                    g_t[i] = torch.sum(f(t_user[i], ys[i]) * grad_ys[i]).to(g_t.dtype)
                    extra_f += 1
                zf = torch.cat([ys[i].reshape(-1), a.reshape(-1), *[p.reshape(-1) for p in a_p]])
                with backward_errors(f"integrating from t={float(t_user[i]):.6g} to t={float(t_user[i - 1]):.6g}"):
                    out = bprob.run(y0=zf, t=bprob.t[k : k + 2])
                if not out.status.ok:
                    _record(stats, bprob.stats, extra_f)
                    t_fail = None if out.t_fail is None else (-out.t_fail if bprob.reverse else out.t_fail)
                    where = f" at t={t_fail:.6g}" if t_fail is not None else ""
                    msg = (
                        f"{out.status.value} This happened in the backward (adjoint) pass{where}, integrating "
                        f"from t={float(t_user[i]):.6g} to t={float(t_user[i - 1]):.6g}: {out.detail}. "
                        "Try other `adjoint_rtol`/`adjoint_atol`, `adjoint_options` or `adjoint_method`."
                    )
                    raise exception_for(out.status)(msg, t=t_fail)
                if bprob.method.adaptive and out.h_next is not None and bw.options.get("first_step") is None:
                    bprob.cfg.first_step = out.h_next  # the next interval starts at the step size this one ended with
                zend = out.ys[-1]
                parts = split_state(zend, bprob.shapes)
                # the rebuilt state against the stored one: raises AdjointRebuildError beyond the bound
                check_rebuilt(parts[0], ys[i - 1], bw.rtol, bw.atol, stats, prob.gradient_options.get("rebuild_tol"), float(t_user[i - 1]))
                a = parts[1] + grad_ys[i - 1]
                a_p = list(parts[2:])
        if need_t:
            g_t[0] = -torch.sum(f(t_user[0], ys[0]) * (a - grad_ys[0])).to(g_t.dtype)
            extra_f += 1
            if prob.reverse:
                g_t = -g_t
            if n < t_int.shape[0]:
                g_t = torch.cat([g_t, g_t.new_zeros(t_int.shape[0] - n)])
    if n > 1:
        _record(stats, bprob.stats, extra_f)
    elif extra_f:
        stats.n_f_evals_backward += extra_f
    g_params = [g.to(p.dtype) for g, p in zip(a_p, params)]
    return a, g_t, g_params


def _record(stats, bstats, extra_f: int) -> None:
    stats.n_f_evals_backward += bstats.n_f_evals + extra_f
    stats.n_vjp_evals += bstats.n_f_evals
    stats.n_steps_backward += bstats.n_steps
    stats.n_rejected_backward += bstats.n_rejected
    stats.n_backward_root_iters += bstats.n_root_iters  # implicit backward methods
    bstats.n_f_evals = bstats.n_steps = bstats.n_rejected = bstats.n_root_iters = 0


def adjoint_runner(prob: Problem) -> Outcome:
    """The ``gradient="adjoint"`` mode: outputs whose backward is the continuous adjoint."""
    params = resolve_params(prob)
    bw = _Backward(prob, params)
    box = {"prob": prob, "bwd": bw}
    ys = _AdjointFunction.apply(box, prob.y0, prob.t, *params)
    out = box["outcome"]
    return Outcome(ys, out.status, out.t_fail, out.detail)


register_gradient_mode("adjoint", adjoint_runner)


def odeint_adjoint(
    func: Callable,
    y0,
    t,
    *,
    rtol=1e-7,
    atol=1e-9,
    method: Optional[str] = None,
    options: Optional[dict] = None,
    adjoint_rtol=None,
    adjoint_atol=None,
    adjoint_method: Optional[str] = None,
    adjoint_options: Optional[dict] = None,
    adjoint_params=None,
    adjoint_mode: str = "rebuild",
    event_fn: Optional[Callable] = None,
):
    """``odeint`` whose gradients come from the continuous adjoint (O(1) memory in steps).

    A drop-in replacement for ``torchdiffeq.odeint_adjoint``: same signature, semantics
    and output. Gradients flow to ``y0``, to ``t`` and to ``adjoint_params``.

    Parameters
    ----------
    func : callable
        ``func(t, y)``. If it is not an ``nn.Module``, ``adjoint_params`` is required.
    y0, t, rtol, atol, method, options
        As for :func:`solvers.odeint`.
    adjoint_rtol, adjoint_atol : float, optional
        Tolerances of the backward solve; default ``rtol``/``atol``.
    adjoint_method : str, optional
        Method of the backward solve; default ``method``.
    adjoint_options : dict, optional
        Options of the backward solve; default ``options`` without ``norm`` (only when the
        methods agree). ``norm="seminorm"`` leaves the parameter adjoints out of the
        error norm, which usually saves backward steps; a callable norm receives the
        tuple ``(adj_t, y, adj_y, *adj_params)`` as in torchdiffeq (``adj_t`` is a 0-dim zero:
        the time adjoint is not integrated here; tuple states pass their parts:
        ``(adj_t, *y_parts, *adj_y_parts, *adj_params)``).
    adjoint_params : sequence of Tensor, optional
        Tensors that ``func`` uses and that need gradients; each must require grad.
        Default: ``func.parameters()`` (those requiring grad) for an ``nn.Module``.
    adjoint_mode : {"rebuild", "checkpointed"}
        ``"rebuild"`` (torchdiffeq's adjoint): the state is re-solved backwards, O(1) memory;
        its mismatch with the stored output states is checked (``AdjointRebuildError``).
        ``"checkpointed"``: the forward states at accepted steps are stored (O(steps)
        memory) and each backward step restarts from one, which stays accurate on
        dissipative fields where the rebuilt state is wrong (``gradient="checkpointed_adjoint"``).

    event_fn : callable, optional
        torchdiffeq's event mode, as in :func:`solvers.odeint`: returns ``(event_t,
        solution)``. The event is located without a graph, then the states at ``[t0,
        event_t]`` come from an adjoint solve (gradients to ``y0``, ``t0`` and the parameters
        at the fixed event time; :func:`solvers.odeint_event` adds those of ``event_t``).

    Returns
    -------
    Tensor or tuple of Tensor
        ``[len(t), *y0.shape]`` (a tuple of such for tuple states).

    Raises
    ------
    SolverError
        A numerical failure in the forward solve, or in the backward solve (the message
        says it happened in the backward (adjoint) pass).
    """
    if adjoint_params is None and not isinstance(func, torch.nn.Module):
        raise TypeError(
            "`func` is not an nn.Module, so the adjoint cannot find its parameters: pass them as "
            "`adjoint_params=(...)` (or `adjoint_params=()` if `func` has none)"
        )
    if adjoint_params is not None and not isinstance(adjoint_params, torch.Tensor):
        try:
            adjoint_params = tuple(adjoint_params)
        except TypeError:
            raise TypeError(f"`adjoint_params` must be a sequence of tensors, got {type(adjoint_params).__name__}") from None
    modes = {"rebuild": "adjoint", "checkpointed": "checkpointed_adjoint"}
    if adjoint_mode not in modes:
        raise ValueError(f"`adjoint_mode` must be 'rebuild' or 'checkpointed', got {adjoint_mode!r}")
    if event_fn is not None:
        from ._event_odeint import odeint_until_event

        adj = dict(adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_method=adjoint_method, adjoint_options=adjoint_options, adjoint_params=adjoint_params, adjoint_mode=adjoint_mode)
        return odeint_until_event(func, y0, t, event_fn, rtol=rtol, atol=atol, method=method, options=options, adjoint=adj)
    gopts = {"rtol": adjoint_rtol, "atol": adjoint_atol, "method": adjoint_method, "options": adjoint_options}
    sol = solve(
        func, y0, t, method="dopri5" if method is None else method, rtol=rtol, atol=atol, options=options,
        gradient=modes[adjoint_mode], params=adjoint_params, gradient_options={k: v for k, v in gopts.items() if v is not None},
    )
    return sol.ys
