"""Methods that run their own loop: multistep methods and wrappers of external integrators.

The contract of :mod:`solvers._base` is one step at a time, with the loop and the
controller elsewhere. Two kinds of method do not fit it: a *multistep* method (Adams)
needs the derivatives of earlier steps, and a *wrapper* (``scipy_solver``) hands the whole
solve to another library. They subclass :class:`AbstractOwnLoopSolver` and implement
:meth:`~AbstractOwnLoopSolver.integrate`, which ``solvers._integrate.integrate`` calls in
place of its loops (the one dispatch line there).

Rules, in addition to those of :mod:`solvers._base`:

1. ``integrate(field, y0, t, cfg, stats)`` returns an ``Outcome`` with the states at every
   output time (a prefix on failure, with the status, time and detail), evaluates the
   field only through ``field`` (so evaluations are counted and reversed time and tuple
   states work) and fills ``stats``.
2. ``step`` raises: ``gradient="checkpoint"`` replays single steps, which such a method
   does not have. Direct backpropagation and the continuous adjoint run through
   ``integrate`` and work for differentiable methods.
3. ``external = True`` marks a wrapper around an integrator outside torch: no fixed-step
   order to test and no gradient through it.
"""

from __future__ import annotations

import abc

from ._base import AbstractSolver

__all__ = ["AbstractOwnLoopSolver"]


class AbstractOwnLoopSolver(AbstractSolver):
    """A method that integrates a whole solve itself (see the module docstring)."""

    #: a wrapper around an integrator outside torch (no gradients, no fixed-step order)
    external: bool = False
    one_step = False

    @abc.abstractmethod
    def integrate(self, field, y0, t, cfg, stats):
        """Solve from ``y0`` at ``t[0]`` to every time of the increasing 1-D ``t``."""

    def step(self, func, ts, y0, h, f0):
        raise ValueError(
            f"method {self.name!r} runs its own loop and has no single step to replay; "
            "gradient='checkpoint' needs a one-step method: use gradient='direct' or 'adjoint', or another method"
        )
