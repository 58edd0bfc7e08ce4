"""Results of a solve: status codes, statistics, the solution object and exceptions."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Optional

import torch

__all__ = [
    "Status",
    "Stats",
    "Solution",
    "SolverError",
    "NonFiniteStateError",
    "StepSizeUnderflowError",
    "MaxStepsError",
    "RootFinderError",
    "AdjointRebuildError",
]


class Status(enum.Enum):
    """How a solve ended. Each value is the message a user reads."""

    SUCCESS = "The solve finished successfully."
    NON_FINITE = (
        "The state or the vector field became non-finite (NaN or inf). The problem may blow up, "
        "or the step is unstable: try a smaller `step_size`, tighter tolerances or an implicit method."
    )
    STEP_SIZE_UNDERFLOW = (
        "The step size fell below `min_step` (or below floating-point resolution of t). "
        "The problem may be stiff (try an implicit method such as 'kvaerno5') or singular near this time."
    )
    MAX_STEPS = "The maximum number of solver steps was reached. Try increasing `max_num_steps`."
    ROOT_FINDER = (
        "The nonlinear solve of an implicit step did not converge. Try root_finder='newton', a smaller "
        "`step_size`, or more `max_iters`."
    )
    ADJOINT_REBUILD = (
        "The continuous adjoint rebuilt the forward state backwards in time with a large error, so "
        "its gradient cannot be trusted: reverse-time integration of a dissipative field amplifies "
        "every error. Use gradient='checkpointed_adjoint' (restarts from stored forward states), "
        "'direct' or 'checkpoint'; tighter tolerances rarely help."
    )

    @property
    def ok(self) -> bool:
        return self is Status.SUCCESS


@dataclasses.dataclass
class Stats:
    """Work counters of one solve. Backward-pass fields fill in when backward runs."""

    n_f_evals: int = 0
    n_steps: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    n_initial_step_evals: int = 0
    #: calls of an event function (``solve(..., events=...)``): one per accepted step plus root location
    n_event_evals: int = 0
    # implicit methods
    n_root_iters: int = 0
    max_root_iters: int = 0
    n_root_solves: int = 0
    n_root_failures: int = 0
    n_jac_evals: int = 0
    n_linear_solves: int = 0
    n_jvp_evals: int = 0
    #: applications of a GMRES preconditioner (Newton–Krylov ``preconditioner=``), forward and backward
    n_precond_evals: int = 0
    # backward pass
    n_f_evals_backward: int = 0
    n_vjp_evals: int = 0
    n_steps_backward: int = 0
    n_rejected_backward: int = 0
    n_backward_root_iters: int = 0
    n_checkpoints: int = 0
    # per-sample time grids: [B] int64 tensors (None on a shared grid)
    sample_f_evals: Optional[torch.Tensor] = None
    sample_accepted: Optional[torch.Tensor] = None
    sample_rejected: Optional[torch.Tensor] = None
    #: Largest mismatch between a state the adjoint rebuilt backwards and the stored forward
    #: state, in units of ``atol + rtol |y|`` (continuous adjoints only; 0 otherwise).
    adjoint_rebuild_error: float = 0.0

    @property
    def mean_root_iters(self) -> float:
        return self.n_root_iters / self.n_root_solves if self.n_root_solves else 0.0

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in ("sample_f_evals", "sample_accepted", "sample_rejected"):
            if d[k] is not None:
                d[k] = d[k].tolist()
        d["mean_root_iters"] = self.mean_root_iters
        return d


@dataclasses.dataclass
class Solution:
    """What a solve returns in the object API.

    Attributes
    ----------
    ys : Tensor or tuple of Tensor
        The state at each reached output time, ``[len(ts), *y0.shape]``.
    ts : Tensor
        The output times reached (all of ``t`` on success; a prefix on failure).
    status : Status
        ``Status.SUCCESS`` or the failure; ``status.value`` is the message.
    stats : Stats
        Function evaluations, steps, root-finder work; backward fields after backward.
    message : str
        A human-readable account including, on failure, the time where it happened.
    t_fail : float or None
        The time at which the solve failed.
    event_t, event_y, event_mask : Tensor or None
        With ``solve(..., events=...)``: the event times, the states there and which entries
        fired (see ``docs/events.md``); ``None`` otherwise. ``event_t`` carries
        implicit-function-theorem gradients.
    """

    ys: Any
    ts: torch.Tensor
    status: Status
    stats: Stats
    message: str = ""
    t_fail: Optional[float] = None
    event_t: Optional[torch.Tensor] = None
    event_y: Any = None
    event_mask: Optional[torch.Tensor] = None
    dense: Any = dataclasses.field(default=None, repr=False)

    def evaluate(self, t):
        """The method's own interpolant at ``t`` (a float, 0-dim or 1-D tensor) in the solved span.

        Needs ``solve(..., dense=True)``. Returns the state shape (0-dim ``t``) or
        ``[len(t), *state]``; differentiable with respect to ``y0``, the field's parameters
        and ``t``. A time outside the span raises ``ValueError``.

        On a per-sample grid (a solve with ``t`` of shape ``[B, T]``) ``t`` has shape
        ``[B, Q]``: row ``b`` holds sample ``b``'s query times, each inside that sample's own
        span, and the result is ``[Q, B, ...]``, each sample interpolated on its own steps.
        """
        if self.dense is None:
            raise ValueError("this Solution has no dense output; solve with `dense=True` to call evaluate()")
        return self.dense.evaluate(t)

    @property
    def success(self) -> bool:
        return self.status.ok


class SolverError(RuntimeError):
    """A numerical failure during a solve. ``.status``, ``.t`` and ``.solution`` say more."""

    status = None

    def __init__(self, message: str, *, t: Optional[float] = None, solution: Optional[Solution] = None):
        super().__init__(message)
        self.t = t
        self.solution = solution


class NonFiniteStateError(SolverError):
    """The state or the error estimate became NaN or infinite."""

    status = Status.NON_FINITE


class StepSizeUnderflowError(SolverError):
    """The adaptive step size fell below ``min_step`` or the resolution of ``t``."""

    status = Status.STEP_SIZE_UNDERFLOW


class MaxStepsError(SolverError):
    """The solve took ``max_steps`` steps without reaching the last time."""

    status = Status.MAX_STEPS


class RootFinderError(SolverError):
    """The nonlinear solve of an implicit step did not converge."""

    status = Status.ROOT_FINDER


class AdjointRebuildError(SolverError):
    """The continuous adjoint's rebuilt state disagrees with the stored forward state.

    Raised by the backward pass of ``gradient="adjoint"`` when
    ``Stats.adjoint_rebuild_error`` exceeds the ``rebuild_tol`` gradient option.
    """

    status = Status.ADJOINT_REBUILD


_EXCEPTIONS = {
    Status.NON_FINITE: NonFiniteStateError,
    Status.STEP_SIZE_UNDERFLOW: StepSizeUnderflowError,
    Status.MAX_STEPS: MaxStepsError,
    Status.ROOT_FINDER: RootFinderError,
    Status.ADJOINT_REBUILD: AdjointRebuildError,
}


def exception_for(status: Status) -> type:
    return _EXCEPTIONS[status]
