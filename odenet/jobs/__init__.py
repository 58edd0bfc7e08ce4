"""Jobs: each reads a config, loads data, builds models, trains them with the one
training loop, evaluates and writes a report (table, ``results.json``, PNGs).

- ``compare``: one field as a ResNet, an implicit ResNet and a Neural ODE.
- ``timeseries``: six model families on irregular series with dropped observations.
- ``_claims``: the :class:`Claim` record that stability and robustness results are
  reported as (ID from CLAIMS.md, expected, measured, tolerance, holds).
"""

from ._compare import CompareConfig, compare, format_table
from ._timeseries import TimeseriesConfig, format_series_table, load_series_data, timeseries

__all__ = ["CompareConfig", "compare", "format_table", "TimeseriesConfig", "timeseries", "format_series_table",
           "load_series_data"]
