"""Analysis: measure stability on your own methods, fields and blocks.

- Linear stability of a solver, measured from its own step: :func:`stability_function`,
  :func:`tableau_stability_function`, :func:`stability_region`, :func:`axis_limit`,
  :func:`blowup_step`.
- Jacobians through depth: :func:`jacobian`, :func:`singular_values`,
  :func:`gradient_gain`, :func:`lipschitz_ratio`, :func:`power_iteration_norm`.
- Lyapunov exponents (Benettin/QR): :func:`lyapunov_exponents` for flows,
  :func:`map_lyapunov_exponent` for maps such as RNN steps,
  :func:`tanh_rnn_mean_field_lambda1`, :func:`log_growth_slope`, and the :class:`Lorenz`
  field.

- Solver robustness of a trained model (is it an ODE or a discrete ResNet?):
  :func:`check_solver_robustness`.

The ``odenet stability`` job (:func:`odenet.stability`) measures the claims of
``CLAIMS.md`` with these functions.
"""

from ._jacobian import gradient_gain, jacobian, lipschitz_ratio, power_iteration_norm, singular_values
from ._lyapunov import (Lorenz, log_growth_slope, lyapunov_exponents, map_lyapunov_exponent,
                        tanh_rnn_mean_field_lambda1)
from ._solver_robustness import SolverRobustnessReport, check_solver_robustness
from ._regions import (axis_limit, blowup_step, resolve_method, stability_function, stability_region,
                       tableau_rounding_scale, tableau_stability_function)

__all__ = [
    "stability_function",
    "tableau_stability_function",
    "tableau_rounding_scale",
    "stability_region",
    "axis_limit",
    "blowup_step",
    "resolve_method",
    "jacobian",
    "singular_values",
    "gradient_gain",
    "lipschitz_ratio",
    "power_iteration_norm",
    "Lorenz",
    "lyapunov_exponents",
    "map_lyapunov_exponent",
    "tanh_rnn_mean_field_lambda1",
    "log_growth_slope",
    "check_solver_robustness",
    "SolverRobustnessReport",
]
