"""The registry of time-series models: ``SERIES_MODELS`` and :func:`build_series_model`."""

from __future__ import annotations

import inspect
from typing import Any

from ._latent_ode import LatentODE
from ._ncde import NeuralCDE
from ._ode_rnn import GRUODE, ODERNN
from ._rnn_baselines import GRUD, GRUDelta

__all__ = ["SERIES_MODELS", "ODE_SERIES_MODELS", "build_series_model"]

#: Name -> class of every time-series model (the ``--models`` names of ``odenet timeseries``).
SERIES_MODELS = {"ode_rnn": ODERNN, "latent_ode": LatentODE, "gru_ode": GRUODE, "ncde": NeuralCDE,
                 "gru_dt": GRUDelta, "gru_d": GRUD}
#: The models that integrate an ODE (the others are the RNN baselines).
ODE_SERIES_MODELS = ("ode_rnn", "latent_ode", "gru_ode", "ncde")


def build_series_model(name: str, in_channels: int, *, num_classes: int = 0, out_channels: int = 0,
                       hidden: int = 32, **kw: Any):
    """A model from :data:`SERIES_MODELS`; each gets the keywords its class takes (solver settings
    go to the ODE models only)."""
    if name not in SERIES_MODELS:
        raise ValueError(f"unknown time-series model {name!r}; choose from {', '.join(SERIES_MODELS)}")
    cls = SERIES_MODELS[name]
    accepted = inspect.signature(cls.__init__).parameters
    kw = {k: v for k, v in kw.items() if k in accepted}  # e.g. no solver settings for the baselines
    return cls(in_channels, hidden, num_classes, out_channels or None, **kw)
