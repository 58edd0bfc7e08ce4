"""One adaptive explicit Runge–Kutta step fused by ``torch.compile`` (option ``compile_step``).

On small states an eager step costs more in kernel launches than in arithmetic: dopri5 on a
256 × 2 state runs ~26 elementwise kernels for its stage combinations and ~7 for its error
norm beside the six field calls (benchmarks/README.md, "Adaptive loop: where the time
goes"). With ``options=dict(compile_step=True)`` the step — stage combinations, the field
calls, the solution, the error estimate, the error scale and its norm — is one function
compiled with ``torch.compile(fullgraph=True)``, so inductor fuses the elementwise work
into a few kernels (and into the field's own). The loop around it stays eager: the
accept/reject decision, the step-size controller, dense output, events and hooks are
unchanged, with the same one host read per step (the error ratio).

What it costs and when it applies:

- the first step compiles (tens of seconds on a small CPU; inductor caches on disk), and
  every new field *object*, state shape, dtype or device compiles again (dynamo's guards:
  pass the same ``nn.Module`` or function each call, not a fresh closure);
- the results equal the eager step's to rounding (fused kernels sum in another order), so
  an accept/reject decision at the threshold can differ;
- explicit Runge–Kutta methods with an embedded error estimate (``dopri5``, ``tsit5``,
  ``bosh3``, ``fehlberg2``, ``adaptive_heun``; not ``dopri8``, whose error
  estimate has its own ratio), on a shared or a per-sample grid; the field must be
  traceable by dynamo with no graph break (otherwise a ``RuntimeError`` names the option and
  the cause); times that carry gradients run the eager step;
- the continuous adjoint's backward solve compiles its steps too when the field is an
  ``nn.Module`` holding the adjoint parameters: its backward field is then
  :class:`TracedAugmented` (``torch.func.vjp``, which dynamo traces, instead of
  ``torch.autograd.grad``, which it does not); otherwise, and on per-sample grids and for the
  checkpointed adjoint, the backward runs eager;
- dynamo compiles at most a few variants (``torch._dynamo.config.recompile_limit``, 8) of
  one method's step: a field that is a fresh closure per solve, or that changes a Python
  number stored on itself at every call (a call counter), recompiles each time and soon
  fails with that ``RuntimeError`` — count calls with the solution's ``stats`` instead.
"""

from __future__ import annotations

import types
import weakref
from typing import Callable, Optional, Tuple

import torch

from ._integrate import max_of_rms, rms_norm
from ._problem import split_state

__all__ = ["compiled_step", "supports_compiled_step", "traced_norm", "backend_of", "traced_augmented"]


def _compile_errors() -> tuple:
    from torch._dynamo import exc

    out = [exc.TorchDynamoException, exc.FailOnRecompileLimitHit]
    try:
        from torch._inductor.exc import InductorError

        out.append(InductorError)
    except ImportError:  # older torch
        pass
    return tuple(out)


_COMPILED: dict = {}  # (backend, method, norm, tuple shapes, reverse) -> compiled copy of _step


def supports_compiled_step(method) -> bool:
    """An adaptive explicit RK method (class or instance) whose step is the plain tableau loop
    and whose error ratio is the standard one."""
    from ._base import AbstractAdaptiveSolver
    from ._explicit import _RKMixin

    cls = method if isinstance(method, type) else type(method)
    return bool(issubclass(cls, _RKMixin) and cls.adaptive and not cls.implicit and cls.step is _RKMixin.step
                and getattr(cls, "_e", None) and cls.error_ratio is AbstractAdaptiveSolver.error_ratio)


def _step(func: Callable, reverse: bool, shapes, rows, b, e, fsal: bool, norm: Optional[Callable], tdt: torch.dtype,
          ts: torch.Tensor, y: torch.Tensor, h: Optional[torch.Tensor], f0: torch.Tensor, rtol, atol):
    """The traced body: ``(y1, f1 or None, ks, r, stage times)``. Shared grid: ``ts`` holds the
    stage times and then the step size (float64, ``h`` None); per-sample grid: ``ts`` ``(s, B)``
    and ``h`` ``[B, 1, ...]``. ``r`` is the error ratio ``norm(error / scale)`` (``norm`` from
    :func:`traced_norm`; a tuple state's parts are split for :func:`~solvers._integrate.max_of_rms`)
    or ``error / scale`` when ``norm`` is None (the loop applies the user's norm)."""
    if h is None:
        h = ts[-1]
        ts = ts[:-1]
    ts = ts.to(tdt)

    def f(t, x):
        if reverse:
            t = -t
        if shapes is not None:
            out = torch.cat([v.reshape(-1) for v in func(t, split_state(x, shapes))])
        else:
            out = func(t, x)
        return -out if reverse else out

    def comb(base, terms, ks):
        acc = None
        for j, c in terms:
            acc = ks[j] * c if acc is None else acc + ks[j] * c
        return acc * h if base is None else base + acc * h

    ks = [f0]
    yi = y
    for i in range(1, len(rows)):
        yi = comb(y, rows[i], ks)
        ks.append(f(ts[i], yi))
    if fsal:
        y1, f1 = yi, ks[-1]
    else:
        y1, f1 = comb(y, b, ks), None
    q = comb(None, e, ks) / (atol + rtol * torch.maximum(y.abs(), y1.abs()))
    if norm is None:
        r = q
    else:
        r = norm(split_state(q, shapes) if norm is max_of_rms else q)
    return y1, f1, tuple(ks), r, ts.unbind(0)


def traced_norm(norm: Optional[Callable], per_sample: bool) -> Optional[Callable]:
    """The loop's default error norm, computed inside the compiled step (``rms_norm``,
    ``batch_rms_norm`` or a tuple state's ``max_of_rms``); None for a user's norm, which the
    loop applies to the step's ``error / scale``."""
    from ._grids import batch_rms_norm

    if per_sample:
        return batch_rms_norm if norm in (None, rms_norm, batch_rms_norm) else None
    if norm in (None, rms_norm):
        return rms_norm
    return max_of_rms if getattr(norm, "default_parts", False) else None


def backend_of(value, what: str = "option `compile_step`") -> Optional[str]:
    """``compile_step``'s value as a torch.compile backend name (None: eager steps); bad values
    raise, naming ``what``."""
    if value is None or value is False:
        return None
    if value is True:
        return "inductor"
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be True, False or a torch.compile backend name such as 'inductor', got {value!r}")
    try:
        from torch._dynamo import lookup_backend

        lookup_backend(value)
    except Exception as err:  # torch's InvalidBackend, re-raised naming the option
        raise ValueError(f"{what}: {err}") from err
    return value


def compiled_step(method, field, norm: Optional[Callable], backend: str = "inductor") -> Optional[Callable]:
    """``step(ts, y, h, f0, rtol, atol) -> (y1, f1, ks, r, stage times)`` for ``method`` on
    ``field`` (see :func:`_step`): the compiled tableau loop, counting its field calls into
    ``field.stats``; ``norm`` from :func:`traced_norm`. None when ``field`` is not the solve's
    own :class:`~solvers._problem.VectorField` or ``method`` has its own step (a gradient
    mode's wrapper of either): the eager step."""
    from ._problem import VectorField

    if type(field) is not VectorField or not supports_compiled_step(method):
        return None  # (e.g. the checkpointed adjoint's recording wrapper of the method: its own step)
    func, reverse, shapes = field.func, bool(field.reverse), field.shapes
    shapes = None if shapes is None else tuple(tuple(s) for s in shapes)
    errors = _compile_errors()
    key = (backend, type(method).__name__, norm, shapes, reverse)
    fn = _COMPILED.get(key)
    if fn is None:
        # one copy of _step's code per key: dynamo keeps its compiled variants (and its limit of
        # recompiles) per code object, so one method's fields do not use up another's
        body = types.FunctionType(_step.__code__.replace(), _step.__globals__, f"_step_{len(_COMPILED)}")
        fn = _COMPILED[key] = torch.compile(body, fullgraph=True, backend=backend)
    rows = tuple(tuple(r) for r in method._rows)
    b, e, fsal = tuple(method._b), tuple(method._e), bool(method._fsal)
    calls = len(rows) - 1
    stats = field.stats
    tdt = field.time_dtype

    def step(ts: torch.Tensor, y: torch.Tensor, h: torch.Tensor, f0: torch.Tensor, rtol, atol) -> Tuple[torch.Tensor, Optional[torch.Tensor], tuple, torch.Tensor]:
        stats.n_f_evals += calls
        try:
            return fn(func, reverse, shapes, rows, b, e, fsal, norm, tdt, ts, y, h, f0, rtol, atol)
        except errors as err:
            raise RuntimeError(
                f"option `compile_step`: torch.compile could not compile the step of {method.name!r} on this vector field "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). The field must trace with no graph "
                "break (no .item(), .tolist(), print or data-dependent Python branch), and a field that changes a Python "
                "number on itself at every call (a call counter) or is a fresh closure per solve recompiles every time: "
                "count calls with the solution's `stats` instead. Or remove `compile_step`."
            ) from err

    return step


class TracedAugmented:
    """The continuous adjoint's backward field ``(y, a) -> (f, -a^T df/dy, *(-a^T df/dp))``
    written with ``torch.func.vjp`` over ``functional_call`` of the user's module, which
    dynamo traces (``torch.autograd.grad``, which the eager backward field uses, it does not):
    the backward solve's steps can then be compiled as well."""

    def __init__(self, module: torch.nn.Module, names: tuple, params: tuple):
        self.module, self.names, self.params = module, names, params

    def __call__(self, u, z):
        from torch.func import functional_call, vjp

        y, a = z[0], z[1]
        module, names = self.module, self.names

        def fn(yy, *ps):
            return functional_call(module, dict(zip(names, ps)), (u, yy))

        fy, back = vjp(fn, y, *[p.detach() for p in self.params])
        grads = back(-a)
        return (fy, grads[0], *[g.to(a.dtype) for g in grads[1:]])


_AUGMENTED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def traced_augmented(func, params: tuple) -> Optional[TracedAugmented]:
    """The traceable backward field of ``func`` when ``func`` is an ``nn.Module`` holding every
    parameter in ``params`` (one object per module and parameter set, so that dynamo's guards
    hold from one backward pass to the next); None otherwise (the eager backward field)."""
    if not isinstance(func, torch.nn.Module):
        return None
    named = {id(p): n for n, p in func.named_parameters()}
    if any(id(p) not in named for p in params):
        return None
    key = tuple(id(p) for p in params)
    cache = _AUGMENTED.setdefault(func, {})
    aug = cache.get(key)
    if aug is None or any(q is not p for q, p in zip(aug.params, params)):
        aug = cache[key] = TracedAugmented(func, tuple(named[id(p)] for p in params), tuple(params))
    return aug
