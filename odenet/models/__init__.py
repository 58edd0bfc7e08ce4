"""Models built around :class:`odenet.ODEBlock`: image and MLP classifiers, and time-series
models (ODE-RNN, Latent ODE, GRU-ODE, Neural CDE, GRU-Δt and GRU-D baselines) whose ODEs
evolve every series along its own times (:func:`evolve`)."""

from ._classifiers import MODEL_KINDS, ImageClassifier, MLPClassifier, build_model
from ._evolve import SampleClock, SeriesODEBlock, evolve
from ._latent_ode import LatentODE
from ._ncde import NeuralCDE, control_path
from ._ode_rnn import GRUODE, ODERNN
from ._rnn_baselines import GRUD, GRUDelta
from ._series_base import AbstractSeriesModel, merge_events
from ._series_registry import ODE_SERIES_MODELS, SERIES_MODELS, build_series_model

__all__ = ["ImageClassifier", "MLPClassifier", "build_model", "MODEL_KINDS",
           "evolve", "SampleClock", "SeriesODEBlock", "AbstractSeriesModel", "merge_events",
           "ODERNN", "GRUODE", "LatentODE", "NeuralCDE", "control_path", "GRUDelta", "GRUD",
           "SERIES_MODELS", "ODE_SERIES_MODELS", "build_series_model"]
