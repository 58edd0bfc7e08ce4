"""Repeated plain solves skip the set-up: ``solve``'s cache of plain fixed-step plans.

A training loop calls ``odeint(func, y0, t, method="euler", options=dict(step_size=h))``
with the same ``func``, ``t`` and options on every batch. Each call checks ``y0``, ``t``, the
tolerances and options, builds the problem, looks up the grid and wraps the result, ~50 µs
of Python here that, run between the field's kernels, costs 3-4x that (``bench_fixed``: a
10-step MLP solve at 1.06-1.08x a hand-written loop doing the same tensor operations).

When a solve took the plain loop (:func:`solvers._integrate._fixed_plain` with a one-stage
method: what :class:`~solvers._replay.PlainReplay` re-runs), its plan - the stage times the
field saw and the step weights - is kept here for that ``func`` and ``t``. A later call
with the same ``func`` object, the same ``t`` tensor object at the same version (an
in-place change of ``t`` misses), the same method name, tolerances and options (scalar
values only), and a ``y0`` of the same shape, dtype and device runs that loop directly: the
same operations in the same order, so the same bits, the same stats and the same checks of
the field's output (the first call's type, shape and dtype in full, then its shape). A
non-finite result is not reported from here: the call is solved afresh, which raises or
returns the failure exactly as an uncached solve does.

Entries hold ``func`` and ``t`` weakly (a cached plan never keeps a model alive), at most
:data:`PER_FUNC` per function; ``func`` objects that cannot be weakly referenced or hashed
are not cached. Nothing is cached or looked up under ``torch.compile`` or for a ``t`` that
requires grad or is an inference tensor (it has no version counter).
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch

from ._compile import compiling
from ._integrate import _all_finite
from ._registry import METHODS
from ._replay import PlainReplay
from ._solution import Solution, Status

#: plans kept per function (oldest dropped first)
PER_FUNC = 4
_SCALARS = (bool, int, float, str, type(None), torch.dtype)
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _key(method, rtol, atol, options, y0) -> Optional[tuple]:
    if type(method) is not str or not isinstance(y0, torch.Tensor):
        return None
    if type(rtol) is not float or type(atol) is not float:
        return None
    if options:
        if type(options) is not dict:
            return None
        items = tuple(options.items())
        for _, v in items:
            if not isinstance(v, _SCALARS):
                return None
    else:
        items = ()
    return (method, METHODS.get(method), rtol, atol, items, y0.shape, y0.dtype, y0.device)


def _usable_t(t) -> bool:
    return isinstance(t, torch.Tensor) and t.ndim == 1 and not t.requires_grad and not t.is_inference()


class _Plan:
    __slots__ = ("t_ref", "t_version", "template", "check")

    def __init__(self, t, template: PlainReplay, check: bool):
        self.t_ref, self.t_version, self.template, self.check = weakref.ref(t), t._version, template, check


def lookup(func, y0, t, method, rtol, atol, options) -> Optional[Solution]:
    """The solution of a repeated plain solve from its kept plan, or None (solve afresh)."""
    if not _PLANS or not _usable_t(t) or compiling():
        return None
    try:
        per_func = _PLANS.get(func)
    except TypeError:  # unhashable
        return None
    if per_func is None:
        return None
    key = _key(method, rtol, atol, options, y0)
    plan = per_func.get(key) if key is not None else None
    if plan is None or plan.t_ref() is not t or plan.t_version != t._version:
        return None
    replay = plan.template.bound(func)
    y, stats = replay.run(y0)
    if plan.check and not _all_finite(y):
        return None
    sol = Solution(torch.stack([y0, y]), t.to(y0.device), Status.SUCCESS, stats, Status.SUCCESS.value, None)
    sol._replay = replay
    return sol


def store(func, y0, t, method, rtol, atol, options, plain, check: bool) -> None:
    """Keep the plan of a finished plain solve (``outcome.plain``) for ``func`` and ``t``."""
    if not _usable_t(t) or compiling() or plain[0] is not func:
        return
    key = _key(method, rtol, atol, options, y0)
    if key is None:
        return
    try:
        per_func = _PLANS.get(func)
        if per_func is None:
            per_func = _PLANS[func] = {}
    except TypeError:  # not weakly referenceable, or unhashable
        return
    per_func.pop(key, None)
    if len(per_func) >= PER_FUNC:
        per_func.pop(next(iter(per_func)))
    per_func[key] = _Plan(t, PlainReplay(None, *plain[1:], y0), check)  # the loop without func (held weakly)


def clear() -> None:
    """Forget every kept plan."""
    _PLANS.clear()
