"""solvers: numerical integrators for ODEs on PyTorch tensors (imports torch only).

Two doors onto one engine: :func:`odeint` (torchdiffeq-compatible) and :func:`solve`
(returns a :class:`Solution` with ``ys``, ``ts``, ``stats`` and ``status``).
"""

from ._api import GRADIENT_MODES, odeint, register_gradient_mode, solve
from ._adjoint import odeint_adjoint
from ._dense import odeint_dense
from ._event_odeint import odeint_event
from ._events import Event
from . import _checkpoint  # noqa: F401  (registers gradient="checkpoint")
from . import _adjoint_checkpointed  # noqa: F401  (registers gradient="checkpointed_adjoint")
from ._adjoint_rebuild import DEFAULT_REBUILD_TOL
from ._base import AbstractAdaptiveSolver, AbstractImplicitSolver, AbstractSolver, StepResult
from ._controller import AbstractController, IController, PIController
from ._explicit import AbstractAdaptiveExplicitRK, AbstractExplicitRK
from ._registry import METHODS, get_method, register_method
from ._solution import (
    MaxStepsError,
    NonFiniteStateError,
    AdjointRebuildError,
    RootFinderError,
    Solution,
    SolverError,
    Stats,
    Status,
    StepSizeUnderflowError,
)
from ._tableau import ButcherTableau
from ._root import AbstractRootFinder, Anderson, FixedPoint, Newton, NewtonKrylov
from ._implicit import DENSE_MEMORY_BUDGET, AbstractESDIRK, ImplicitEuler, ImplicitMidpoint, Trapezoid, auto_root_finder
from ._sdirk import SDIRK2, TRBDF2, AbstractAdaptiveESDIRK, Kvaerno3, Kvaerno5
from ._collocation import AbstractCollocation, GaussLegendre4, GaussLegendre6, RadauIIA3, RadauIIA5
from ._radau import Radau5
from ._ownloop import AbstractOwnLoopSolver
from ._scipy import ScipySolver
from ._adams import AbstractAdams, ExplicitAdams, FixedAdams, ImplicitAdams

__all__ = [
    "odeint",
    "odeint_adjoint",
    "solve",
    "odeint_event",
    "odeint_dense",
    "Event",
    "METHODS",
    "get_method",
    "register_method",
    "GRADIENT_MODES",
    "register_gradient_mode",
    "ButcherTableau",
    "AbstractSolver",
    "AbstractAdaptiveSolver",
    "AbstractImplicitSolver",
    "AbstractExplicitRK",
    "AbstractAdaptiveExplicitRK",
    "StepResult",
    "AbstractController",
    "IController",
    "PIController",
    "Solution",
    "Stats",
    "Status",
    "SolverError",
    "NonFiniteStateError",
    "StepSizeUnderflowError",
    "MaxStepsError",
    "RootFinderError",
    "AdjointRebuildError",
    "DEFAULT_REBUILD_TOL",
    "AbstractRootFinder",
    "FixedPoint",
    "Anderson",
    "Newton",
    "NewtonKrylov",
    "AbstractESDIRK",
    "auto_root_finder",
    "DENSE_MEMORY_BUDGET",
    "AbstractAdaptiveESDIRK",
    "ImplicitEuler",
    "ImplicitMidpoint",
    "Trapezoid",
    "Kvaerno3",
    "Kvaerno5",
    "SDIRK2",
    "TRBDF2",
    "AbstractCollocation",
    "GaussLegendre4",
    "GaussLegendre6",
    "RadauIIA3",
    "RadauIIA5",
    "Radau5",
    "AbstractOwnLoopSolver",
    "ScipySolver",
    "AbstractAdams",
    "FixedAdams",
    "ImplicitAdams",
    "ExplicitAdams",
]

__version__ = "0.1.0"
