"""``scipy_solver``: the whole solve handed to ``scipy.integrate.solve_ivp`` (torchdiffeq's
``method="scipy_solver"``).

Options: ``solver`` (``"LSODA"`` by default, as torchdiffeq; any name ``solve_ivp`` accepts:
``"RK23"``, ``"RK45"``, ``"DOP853"``, ``"Radau"``, ``"BDF"``, ``"LSODA"``, or an
``OdeSolver`` subclass), and the loop options ``first_step``, ``min_step`` (LSODA only),
``max_step``. ``rtol``/``atol`` are the solve's (tensors become per-component arrays).

The state goes to the host as a flat float64 (or complex128) NumPy array; the field is
called with ``t`` and ``y`` as tensors in the state's dtype and device, under
``torch.no_grad()``; the result comes back in the state's dtype on its device, shaped
``[len(t), *y0.shape]``. Output times are read from scipy's dense output (as its
``t_eval`` does), so ``stats.n_steps`` is the number of scipy steps.

No gradient flows through scipy. torchdiffeq silently returns a tensor without a graph;
here a solve whose ``y0`` or ``t`` requires grad (with grad mode on) raises ``ValueError``,
so that a missing gradient is never discovered as a silently frozen model. Parameters of
the field receive no gradient either (the result does not require grad).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._integrate import Outcome
from ._ownloop import AbstractOwnLoopSolver
from ._registry import register_method
from ._solution import Status

__all__ = ["ScipySolver"]

_SCIPY_METHODS = ("RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA")


def _as_np_tol(tol, shape):
    if isinstance(tol, torch.Tensor):
        return np.broadcast_to(tol.detach().cpu().to(torch.float64).numpy(), shape).reshape(-1)
    return float(tol)


@register_method
class ScipySolver(AbstractOwnLoopSolver):
    """``scipy.integrate.solve_ivp`` as a method (adaptive; order that of ``solver``).

    CPU round trips per evaluation; no gradients. For comparison with scipy and for
    torchdiffeq code that names it; the torch methods are faster on batched problems.
    """

    name = "scipy_solver"
    adaptive = True
    external = True
    order, error_order = 0, 0
    option_names = ("solver",)

    def __init__(self, **options):
        super().__init__(**options)
        solver = options.get("solver", "LSODA")
        if isinstance(solver, str):
            if solver not in _SCIPY_METHODS:
                raise ValueError(f"option `solver` of 'scipy_solver' must be one of {', '.join(_SCIPY_METHODS)} (or a scipy OdeSolver subclass), got {solver!r}")
        elif not isinstance(solver, type):
            raise TypeError(f"option `solver` of 'scipy_solver' must be a name or a scipy OdeSolver subclass, got {type(solver).__name__}")
        self.solver = solver

    def integrate(self, field, y0, t, cfg, stats):
        from scipy.integrate import solve_ivp

        if torch.is_grad_enabled() and (y0.requires_grad or t.requires_grad):
            raise ValueError(
                "method 'scipy_solver' cannot propagate gradients (scipy works on NumPy arrays); "
                "detach y0 and t (or run under torch.no_grad()), or pick a torch method such as 'dopri5' or 'radau5'"
            )
        if cfg.record is not None:  # gradient="checkpoint" records steps to replay them
            self.step(field, None, y0, None, None)
        if cfg.jump_t or cfg.step_t:
            raise ValueError("method 'scipy_solver' does not take `jump_t`/`step_t`; split the solve at those times instead")
        shape, dtype, device = y0.shape, y0.dtype, y0.device
        tdt = t.dtype
        np_dtype = np.complex128 if y0.is_complex() else np.float64

        def fun(s, y):
            ts = torch.tensor(s, dtype=tdt, device=device)
            yt = torch.as_tensor(y).to(device=device, dtype=dtype).reshape(shape)
            with torch.no_grad():
                f = field(ts, yt)
            return f.detach().cpu().numpy().astype(np_dtype, copy=False).reshape(-1)

        tl = t.detach().to(torch.float64).cpu().numpy()
        kw = {}
        if cfg.first_step is not None:
            kw["first_step"] = cfg.first_step
        if math.isfinite(cfg.max_step):
            kw["max_step"] = cfg.max_step
        if cfg.min_step > 0:
            if self.solver != "LSODA":
                raise ValueError("option `min_step` applies to scipy_solver only with solver='LSODA'")
            kw["min_step"] = cfg.min_step
        y_np = y0.detach().cpu().numpy().astype(np_dtype).reshape(-1)
        sol = solve_ivp(fun, (float(tl[0]), float(tl[-1])), y_np, method=self.solver, dense_output=True,
                        rtol=_as_np_tol(cfg.rtol, shape), atol=_as_np_tol(cfg.atol, shape), **kw)
        stats.n_steps += max(sol.t.size - 1, 0)
        stats.n_accepted += max(sol.t.size - 1, 0)
        stats.n_jac_evals += int(getattr(sol, "njev", 0) or 0)
        reached = tl[tl <= sol.t[-1]] if sol.t.size else tl[:1]
        vals = sol.sol(reached) if sol.sol is not None and reached.size > 1 else y_np[:, None]
        vals = np.asarray(vals).reshape(-1, reached.size)
        if reached.size and reached[-1] == sol.t[-1] and sol.y.shape[1]:
            vals[:, -1] = sol.y[:, -1]  # the end of the last step exactly, as t_eval gives it
        ys = torch.as_tensor(vals.T.copy()).to(device=device, dtype=dtype).reshape(reached.size, *shape)
        outs = list(ys.unbind(0))
        outs[0] = y0
        if sol.status != 0 or reached.size < tl.size:
            return Outcome(outs, Status.STEP_SIZE_UNDERFLOW, float(sol.t[-1]), f"scipy's {self.solver} stopped: {sol.message}")
        return Outcome(outs)
