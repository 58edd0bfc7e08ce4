"""The table of registered methods (``solvers.METHODS``), measured, not typed.

Each row is computed from the method class: order, adaptivity and implicitness from its
attributes, the stage count from its tableau, the order of its dense output measured on a
linear non-autonomous problem with a known solution, and the length of its stability interval
on the negative real axis measured with :func:`odenet.analysis.axis_limit` (one step of the
method on ``y' = z y``). A method registered tomorrow gets its row without editing a page.
"""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import torch

import solvers
from odenet.analysis import axis_limit
from griffe_docs import method_anchor

# y' = y^2, z' = 2 t z from t0 = 0.1: y = 1/(c - t), z = exp(t^2), nonlinear and
# non-autonomous, every derivative positive on the steps, so the error constants do not
# change sign inside a step (a sign change makes the observed slope jump around)
_T0 = 0.1
_THETAS = tuple(np.linspace(0.0, 1.0, 9))  # one step, outputs at 7 points strictly inside it


def _field(t, y):
    return torch.stack([y[0] * y[0], 2 * t * y[1]])


def _exact(t):
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.stack([1.0 / (1.0 + _T0 - t), torch.exp(t * t)], dim=-1)


def stages(cls) -> Optional[int]:
    """Number of stages of the method's tableau (``None`` for multistep / external methods)."""
    tab = getattr(cls, "tableau", None)
    if tab is not None and hasattr(tab, "b"):
        return int(np.asarray(tab.b).shape[0])
    c = getattr(cls, "stage_c", None)
    if c is not None and not issubclass(cls, solvers.AbstractOwnLoopSolver):
        return len(c)
    return None


def dense_output_order(name: str) -> Optional[int]:
    """Order ``q`` of the dense output: the local error inside one step is ``O(h^(q+1))``.

    One step of size ``h`` from the exact state, outputs at ``theta = 0.3, 0.55, 0.8`` of the
    step, through the public API (adaptive methods pinned to the step with ``first_step =
    min_step = max_step = h`` and huge tolerances, as ``tests/test_convergence.py`` does).
    ``q`` is the rounded slope of ``log(error)`` against ``log(h)``, minus one: what a user
    sees between steps, ``min(order, order of the interpolant)``. ``None`` for external
    methods.
    """
    cls = solvers.METHODS[name]
    if getattr(cls, "external", False):
        return None
    root = {k: v for k, v in (("root_rtol", 1e-14), ("root_atol", 1e-16)) if k in cls.option_names}
    extra = dict(getattr(cls, "convergence_options", {}), **root)
    hs, errs = [], []
    for h in (0.2, 0.1, 0.05, 0.025):
        t = torch.tensor([_T0 + th * h for th in _THETAS], dtype=torch.float64)
        y0 = _exact(_T0)
        opts = dict(first_step=h, min_step=h, max_step=h) if cls.adaptive else dict(step_size=h)
        try:
            ys = solvers.odeint(_field, y0, t, method=name, rtol=1e10 if cls.adaptive else 1e-7,
                                atol=1e10 if cls.adaptive else 1e-9, options=dict(opts, **extra))
        except solvers.SolverError:  # too long a step for the root finder: try a shorter one
            continue
        err = float((ys[1:-1] - _exact(t[1:-1])).abs().max())
        if err < 1e-13:  # round-off: stop refining
            break
        hs.append(h)
        errs.append(err)
    if len(errs) < 2:
        return None
    slope = np.polyfit(np.log(hs[-2:]), np.log(errs[-2:]), 1)[0]
    return int(round(slope)) - 1


def real_stability_interval(name: str) -> Optional[float]:
    """Length of the stability interval ``[-r, 0]`` on the real axis (``inf``: A-stable there)."""
    cls = solvers.METHODS[name]
    if issubclass(cls, solvers.AbstractOwnLoopSolver):
        return None  # no single step to measure: multistep or external
    return axis_limit(name, "real")


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return "∞" if math.isinf(x) else f"{x:.3f}"
    return str(x)


def rows() -> List[dict]:
    out = []
    for name, cls in solvers.METHODS.items():
        out.append(dict(
            name=name, cls=cls.__name__, anchor=method_anchor(cls),
            order=None if getattr(cls, "external", False) else cls.order,
            error_order=getattr(cls, "error_order", None) if cls.adaptive else None,
            adaptive=bool(cls.adaptive), implicit=bool(cls.implicit), stages=stages(cls),
            dense=dense_output_order(name), stab=real_stability_interval(name),
        ))
    return out


def markdown(rows_: List[dict]) -> str:
    """The table: each method name links to its class in the API reference."""
    head = ("| method | order | embedded order | adaptive | implicit | stages | dense output "
            "| real stability interval |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows_:
        lines.append(f"| [`{r['name']}`][{r['anchor']}] | {_fmt(r['order'])} "
                     f"| {_fmt(r['error_order'])} | {_fmt(r['adaptive'])} | {_fmt(r['implicit'])} "
                     f"| {_fmt(r['stages'])} | {_fmt(r['dense'])} | {_fmt(r['stab'])} |")
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    import time
    t0 = time.perf_counter()
    print(markdown(rows()))
    print(f"{time.perf_counter() - t0:.1f} s")
