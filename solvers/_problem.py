"""Input validation and the wrapped vector field (tuple states, reversed time, counting)."""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Sequence, Tuple

import torch

from ._solution import Stats

__all__ = ["VectorField", "check_y0", "check_t", "check_tol", "check_time_dtype", "flatten_state", "unflatten_outputs"]

_STATE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)


def check_y0(y0) -> Tuple[torch.Tensor, Optional[list]]:
    """Validate ``y0``; return it (flattened and concatenated if a tuple) and the shapes."""
    if isinstance(y0, torch.Tensor):
        _check_state_tensor("y0", y0)
        return y0, None
    if isinstance(y0, (tuple, list)) and len(y0) > 0 and all(isinstance(v, torch.Tensor) for v in y0):
        for i, v in enumerate(y0):
            _check_state_tensor(f"y0[{i}]", v)
        dtypes = {v.dtype for v in y0}
        devices = {v.device for v in y0}
        if len(dtypes) > 1:
            raise TypeError(f"all tensors of a tuple state must share one dtype, got {sorted(map(str, dtypes))}; cast them with .to(dtype)")
        if len(devices) > 1:
            raise ValueError(f"all tensors of a tuple state must be on one device, got {sorted(map(str, devices))}")
        shapes = [v.shape for v in y0]
        return torch.cat([v.reshape(-1) for v in y0]), shapes
    raise TypeError(f"`y0` must be a torch.Tensor or a non-empty tuple of tensors, got {type(y0).__name__}")


def _check_state_tensor(name: str, v: torch.Tensor) -> None:
    # Finiteness of y0 is checked without an extra synchronisation: by the loop's final
    # check (fixed steps) or the initial-step norms (adaptive); see ``nonfinite_y0``.
    if v.dtype not in _STATE_DTYPES:
        raise TypeError(f"`{name}` must be a floating-point or complex tensor, got {v.dtype}; convert it with .float() or .double()")


def nonfinite_y0() -> ValueError:
    return ValueError("`y0` contains NaN or inf; the initial state must be finite")


def check_t(t, y0: torch.Tensor, values: bool = True) -> Tuple[torch.Tensor, Optional[list]]:
    """Validate ``t``: a 1-D, finite, strictly monotonic floating tensor; moved to y0's device.

    Returns the tensor and its values as Python floats. ``values=False`` (a tensor ``t``
    under ``torch.compile``, see :mod:`solvers._compile`): the checks that read values are
    skipped and ``None`` comes back instead of the floats."""
    tl = None
    if not isinstance(t, torch.Tensor):
        if isinstance(t, (list, tuple)) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in t):
            tl = [float(v) for v in t]  # known on the host: no read back (and visible to a tracer)
            t = torch.tensor(tl, dtype=torch.float64)
        else:
            raise TypeError(f"`t` must be a 1-D torch.Tensor of times, got {type(t).__name__}")
    if t.ndim != 1:
        raise ValueError(f"`t` must be 1-D (one row of output times shared by the batch) or 2-D [B, T] (per-sample rows), got shape {tuple(t.shape)}")
    if t.shape[0] < 1:
        raise ValueError("`t` must contain at least one time")
    if not t.dtype.is_floating_point:
        raise TypeError(f"`t` must be a floating-point tensor (float64 recommended), got {t.dtype}")
    if t.device != y0.device:
        t = t.to(y0.device)
    if tl is None:
        if not values:
            return t, None
        tl = t.tolist()  # (reads the values; no detach needed)
    if len(tl) == 2:  # [t0, t1], the common case: the same checks, written out
        if not (math.isfinite(tl[0]) and math.isfinite(tl[1])):
            raise ValueError("`t` contains NaN or inf")
        if tl[0] == tl[1]:
            raise ValueError("`t` must be strictly increasing or strictly decreasing (no repeats); sort it and remove duplicates")
        return t, tl
    if not all(math.isfinite(v) for v in tl):
        raise ValueError("`t` contains NaN or inf")
    if len(tl) > 1:
        inc = all(b > a for a, b in zip(tl, tl[1:]))
        dec = all(b < a for a, b in zip(tl, tl[1:]))
        if not (inc or dec):
            raise ValueError("`t` must be strictly increasing or strictly decreasing (no repeats); sort it and remove duplicates")
    return t, tl


def check_tol(name: str, tol, y0: torch.Tensor, shapes) -> object:
    """A non-negative float, or a tensor broadcastable to the state (per-component)."""
    if type(tol) is float and tol >= 0 and tol != math.inf:  # the common case, checked first (NaN fails >= 0)
        return tol
    if isinstance(tol, (tuple, list)) and shapes is not None:
        if len(tol) != len(shapes):
            raise ValueError(f"`{name}` as a tuple needs one entry per state component ({len(shapes)}), got {len(tol)}")
        parts = []
        for v, s in zip(tol, shapes):
            v = check_tol(name, v, y0, None)
            parts.append(torch.as_tensor(v, dtype=y0.real.dtype, device=y0.device).expand(s).reshape(-1))
        return torch.cat(parts)
    if isinstance(tol, torch.Tensor):
        if tol.requires_grad:
            raise ValueError(f"`{name}` must not require grad; pass tol.detach()")
        if tol.ndim == 0:
            return check_tol(name, float(tol), y0, shapes)
        try:
            torch.broadcast_shapes(tol.shape, y0.shape)
        except RuntimeError:
            raise ValueError(f"`{name}` of shape {tuple(tol.shape)} does not broadcast to the state shape {tuple(y0.shape)}") from None
        if torch.broadcast_shapes(tol.shape, y0.shape) != y0.shape:
            raise ValueError(f"`{name}` of shape {tuple(tol.shape)} would enlarge the state shape {tuple(y0.shape)}")
        if not bool((tol >= 0).all()) or not bool(torch.isfinite(tol).all()):
            raise ValueError(f"`{name}` must be finite and non-negative")
        return tol.to(device=y0.device, dtype=y0.real.dtype)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"`{name}` must be a float or a tensor, got {type(tol).__name__}")
    tol = float(tol)
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"`{name}` must be finite and non-negative, got {tol}")
    return tol


HALF = (torch.float16, torch.bfloat16)


def adaptive_tols(rtol, atol, y0: torch.Tensor):
    """The tolerances an adaptive loop controls with, or a ValueError for ones it cannot.

    Refused: ``rtol == atol == 0`` for some component (no error is ever acceptable), and
    a half-precision state asked for more than its resolution. An ``atol`` of 0 is
    floored at ``sqrt(tiny)`` of the norm's dtype, so a zero component gives a zero
    scaled error instead of ``0/0``. Half-precision states are controlled in float32.
    """
    if isinstance(rtol, torch.Tensor) or isinstance(atol, torch.Tensor):
        zero_r = (rtol == 0) if isinstance(rtol, torch.Tensor) else torch.tensor(rtol == 0)
        zero_a = (atol == 0) if isinstance(atol, torch.Tensor) else torch.tensor(atol == 0)
        both_zero = bool((zero_r & zero_a).any())
    else:  # floats: no tensor, no read back
        both_zero = rtol == 0 and atol == 0
    if both_zero:
        raise ValueError(
            "`rtol` and `atol` are both 0 (for some component): an adaptive method then accepts no error and "
            "cannot take a step; give `atol` > 0 (e.g. atol=1e-9) or `rtol` > 0 (e.g. rtol=1e-7), or use a fixed-step method"
        )
    real = y0.real.dtype if y0.is_complex() else y0.dtype
    if real in HALF:
        eps = torch.finfo(real).eps
        top_r = float(rtol.max()) if isinstance(rtol, torch.Tensor) else rtol
        top_a = float(atol.max()) if isinstance(atol, torch.Tensor) else atol
        if top_r < eps and top_a < eps:
            raise ValueError(
                f"a {real} state resolves relative changes of only about {eps:.2g} (its eps), so `rtol`={top_r:.3g} and "
                f"`atol`={top_a:.3g} ask for more than it can hold and the step size would collapse; pass rtol and atol of "
                f"at least {eps:.0e} (e.g. rtol=atol=1e-2), or solve in float32 (y0.float())"
            )
        real = torch.float32
        rtol = rtol.to(real) if isinstance(rtol, torch.Tensor) else rtol
        atol = atol.to(real) if isinstance(atol, torch.Tensor) else atol
    floor = math.sqrt(torch.finfo(real).tiny)
    if isinstance(atol, torch.Tensor):
        atol = atol.clamp_min(floor) if bool((atol == 0).any()) else atol
    elif atol == 0:
        atol = floor
    return rtol, atol


def check_time_dtype(value, y0: torch.Tensor) -> torch.dtype:
    """The dtype of the times the vector field receives (option ``time_dtype``).

    ``None`` (default): the state's real dtype, as torchdiffeq hands it (a float32 state
    gets float32 ``t``). Step-size control stays in float64 either way; this is only the
    dtype of the ``t`` argument of ``func``.
    """
    if value is None:
        return y0.real.dtype if y0.is_complex() else y0.dtype
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TypeError(f"option `time_dtype` must be None (the state's real dtype) or a real floating torch.dtype such as torch.float64, got {value!r}")
    return value


def with_time_dtype(func: Callable, dtype: torch.dtype) -> Callable:
    """``func`` receiving its time argument cast to ``dtype``."""

    def cast(t, y):
        return func(t if t.dtype == dtype else t.to(dtype), y)

    return cast


def flatten_state(ys: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in ys])


def split_state(y: torch.Tensor, shapes) -> tuple:
    out, i = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(y[..., i : i + n].reshape(tuple(y.shape[:-1]) + tuple(s)))  # 0-dim parts too
        i += n
    return tuple(out)


def unflatten_outputs(ys: torch.Tensor, shapes) -> tuple:
    """``[T, N]`` -> tuple of ``[T, *shape_i]``."""
    return split_state(ys, shapes)


def check_field_output(out, y) -> None:
    """Raise if a vector field's output ``out`` is not a tensor of the state ``y``'s shape and dtype."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the vector field must return a tensor shaped like the state, got {type(out).__name__}")
    if out.shape != y.shape:
        raise ValueError(f"the vector field returned shape {tuple(out.shape)} for a state of shape {tuple(y.shape)}; it must return dy/dt with the state's shape")
    if out.dtype != y.dtype:
        raise TypeError(f"the vector field returned dtype {out.dtype} for a state of dtype {y.dtype}; return the state's dtype (e.g. out.to(y.dtype))")


class VectorField:
    """The user's ``func`` as the loop sees it: counted, validated on first call, with
    tuple states flattened and decreasing time turned into increasing time.

    ``stats`` is shared with the solve; implicit methods record root-finder work on it.
    """

    def __init__(self, func: Callable, y0: torch.Tensor, shapes, stats: Stats, reverse: bool = False, tols=None, params=None, time_dtype=None):
        if not callable(func):
            raise TypeError(f"`func` must be callable as func(t, y), got {type(func).__name__}")
        self.func = func
        self.shapes = shapes
        self.stats = stats
        self.reverse = reverse
        self.dtype = y0.dtype
        #: dtype of the ``t`` handed to ``func`` (the state's real dtype unless chosen)
        self.time_dtype = check_time_dtype(time_dtype, y0)
        self._unchecked = True
        #: the solve's (rtol, atol) and explicit parameter list (implicit methods read them)
        self.tols = tols
        self.params = None if params is None else list(params)

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.stats.n_f_evals += 1
        if t.dtype != self.time_dtype:
            t = t.to(self.time_dtype)
        if self.reverse:
            t = -t
        if self.shapes is not None:
            out = self.func(t, split_state(y, self.shapes))
            if self._unchecked:
                self._check_tuple(out, y)
            out = torch.cat([v.reshape(-1) for v in out])
        else:
            out = self.func(t, y)
        if self._unchecked:
            self._check(out, y)
        elif not isinstance(out, torch.Tensor) or out.shape != y.shape:  # every call: a later (1,) must not broadcast
            self._check(out, y)
        return -out if self.reverse else out

    def checked_func(self) -> Optional[Callable]:
        """The user's ``func`` itself when calling it is all that :meth:`__call__` still does
        besides counting and the per-call shape check: a plain tensor state, time not
        reversed, the first output already checked. A loop that calls it directly counts
        the calls into ``stats.n_f_evals`` and checks ``out.shape`` itself (via :meth:`_check`);
        its times must be in :attr:`time_dtype` already. None otherwise.
        """
        if type(self) is VectorField and not self.reverse and self.shapes is None and not self._unchecked:
            return self.func
        return None

    def _check(self, out, y) -> None:
        check_field_output(out, y)
        self._unchecked = False

    def _check_tuple(self, out, y) -> None:
        if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
            raise TypeError(f"the vector field must return a tuple of {len(self.shapes)} tensors for a tuple state, got {type(out).__name__}")
        for i, (o, s) in enumerate(zip(out, self.shapes)):
            if not isinstance(o, torch.Tensor) or o.shape != s:
                got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
                raise ValueError(f"the vector field returned {got} for state component {i} of shape {tuple(s)}")
            if o.dtype != y.dtype:
                raise TypeError(f"the vector field returned dtype {o.dtype} for state component {i} of dtype {y.dtype}")
