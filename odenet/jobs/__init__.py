"""Jobs: each reads a config, loads data, builds models, trains them with the one
training loop, evaluates and writes a report (table, ``results.json``, PNGs).

- ``compare``: one field as a ResNet, an implicit ResNet and a Neural ODE.
- ``stability``: the claims of CLAIMS.md A-H measured on the project's own solvers,
  fields and blocks (``odenet stability``).
- ``_claims``: the :class:`Claim` record that stability and robustness results are
  reported as (ID from CLAIMS.md, expected, measured, tolerance, holds).
"""

from ._compare import CompareConfig, compare, format_table
from ._stability import STABILITY_CLAIMS, StabilityConfig, stability

__all__ = ["CompareConfig", "compare", "format_table", "StabilityConfig", "stability", "STABILITY_CLAIMS"]
