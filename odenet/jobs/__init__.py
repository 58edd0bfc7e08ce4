"""Jobs: each reads a config, loads data, builds models, trains them with the one
training loop, evaluates and writes a report (table, ``results.json``, PNGs).

- ``compare``: one field as a ResNet, an implicit ResNet and a Neural ODE.
- ``stability``: the claims of CLAIMS.md A-H measured on the project's own solvers,
  fields and blocks (``odenet stability``).
- ``robustness``: the three views and their variants under the robustness protocol
  (FGSM, PGD, transfer, Square, noise; sanity checks; claims C2, C3, H1).
- ``timeseries``: six model families on irregular series with dropped observations.
- ``_claims``: the :class:`Claim` record that stability and robustness results are
  reported as (ID from CLAIMS.md, expected, measured, tolerance, holds).
"""

from ._claims import Claim, claims_table, write_claims_report
from ._compare import CompareConfig, compare, format_table
from ._stability import STABILITY_CLAIMS, StabilityConfig, stability

from ._timeseries import TimeseriesConfig, format_series_table, load_series_data, timeseries
from ._robustness import PROTOCOL_EPSILONS, VARIANTS, RobustnessConfig, robustness

__all__ = ["CompareConfig", "compare", "format_table", "Claim", "claims_table", "write_claims_report",
           "RobustnessConfig", "robustness", "VARIANTS", "PROTOCOL_EPSILONS",
           "StabilityConfig", "stability", "STABILITY_CLAIMS",
           "TimeseriesConfig", "timeseries", "format_series_table", "load_series_data"]
