"""odenet: one vector field trained as a ResNet, an implicit ResNet or a Neural ODE.

The pieces, bottom up:

- vector fields (``nn.Module`` with ``forward(t, x)``): :class:`MLPField`,
  :class:`ConvField`, time-conditioned by concatenation or FiLM, the parabolic
  :class:`ParabolicConvField` / :class:`ParabolicMLPField` (a one-sided Lipschitz bound
  that keeps backward Euler well posed, whatever the weights), and
  :class:`LayerwiseField` (one block per time interval: an untied ResNet, piecewise constant
  or linearly interpolated in time);
- :class:`ODEBlock`: integrates a field from 0 to ``t1`` with a swappable solver
  (``configure`` / ``using``);
- classifiers :class:`ImageClassifier`, :class:`MLPClassifier` and :func:`build_model`;
- data (:func:`load_dataset`: digits, circles, spirals; no downloads), training
  (:func:`train`, :func:`fit`, resumable atomic checkpoints, DDP under ``torchrun``),
  robustness (:func:`fgsm`, :func:`pgd`, :func:`transfer_pgd`, :func:`square_attack`,
  :func:`attack_suite`), the ``odenet compare`` main job (:func:`compare`) and the
  ``odenet robustness`` job (:func:`robustness`).

Subpackages: ``fields``, ``models``, ``data``, ``training``, ``robustness``, ``analysis``
(stability functions, Jacobian gains, Lyapunov exponents), ``jobs``; the
block is ``odenet._block`` and the command line ``odenet.cli``. Every public name is
importable from ``odenet`` itself.

Time series (irregular, with missing observations): :class:`ODERNN`, :class:`LatentODE`,
:class:`GRUODE`, :class:`NeuralCDE` and the :class:`GRUDelta` / :class:`GRUD` baselines, each
series evolved along its own times (:func:`evolve`); UEA/UCR data bundled in sktime
(:func:`load_uea`), :func:`periodic_sines`; the ``odenet timeseries`` job (:func:`timeseries`).

The command line is ``odenet train`` / ``odenet compare`` / ``odenet timeseries`` (or ``python -m odenet``).
"""

from ._block import SOLVER_KEYS, ODEBlock
from ._io import CheckpointError, load_checkpoint, save_checkpoint
from .data import (DATASETS, DataBundle, SeriesBatch, SeriesData, drop_observations, hermite_cubic_backward,
                   iterate_batches, load_dataset, load_uea, natural_cubic_spline, pad_series, periodic_sines,
                   spiral_series)
from .fields import (ACTIVATIONS, MONOTONE_ACTIVATIONS, TIME_MODES, ConvField, LayerwiseField, MLPField,
                     ParabolicConvField, ParabolicMLPField, spectral_normalize)
from . import analysis
from .analysis import SolverRobustnessReport, check_solver_robustness
from .jobs import (CompareConfig, RobustnessConfig, StabilityConfig, TimeseriesConfig, compare, format_table, robustness,
                   stability, timeseries)
from .models import (GRUD, GRUODE, MODEL_KINDS, ODE_SERIES_MODELS, SERIES_MODELS, GRUDelta, ImageClassifier, LatentODE,
                     MLPClassifier, NeuralCDE, ODERNN, SeriesODEBlock, build_model, build_series_model, evolve)
from .robustness import (AttackSettings, accuracy_vs_epsilon, attack_suite, fgsm, fgsm_accuracy, noise_accuracy, pgd,
                         square_attack, transfer_pgd)
from .training import (FIELDS, SOLVER_FAMILIES, VIEWS, DynamicsRegularizer, SolverSampler, TrainConfig, TrainingError, TrainResult, build_view_model, evaluate, fit,
                       load_model, set_seed, solver_config_for, train)

__all__ = [
    # fields and the block
    "MLPField",
    "ConvField",
    "ParabolicConvField",
    "ParabolicMLPField",
    "MONOTONE_ACTIVATIONS",
    "LayerwiseField",
    "spectral_normalize",
    "ACTIVATIONS",
    "TIME_MODES",
    "ODEBlock",
    "SOLVER_KEYS",
    # training options on the dynamics
    "check_solver_robustness",
    "SolverRobustnessReport",
    "DynamicsRegularizer",
    "SolverSampler",
    "SOLVER_FAMILIES",
    # models
    "ImageClassifier",
    "MLPClassifier",
    "build_model",
    "MODEL_KINDS",
    # time-series models
    "ODERNN",
    "LatentODE",
    "GRUODE",
    "NeuralCDE",
    "GRUDelta",
    "GRUD",
    "SERIES_MODELS",
    "ODE_SERIES_MODELS",
    "build_series_model",
    "evolve",
    "SeriesODEBlock",
    # data
    "load_dataset",
    "DataBundle",
    "DATASETS",
    "iterate_batches",
    # time-series data
    "SeriesBatch",
    "SeriesData",
    "pad_series",
    "drop_observations",
    "load_uea",
    "periodic_sines",
    "spiral_series",
    "natural_cubic_spline",
    "hermite_cubic_backward",
    # training
    "VIEWS",
    "FIELDS",
    "solver_config_for",
    "build_view_model",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "train",
    "fit",
    "evaluate",
    "load_model",
    "set_seed",
    # checkpoints
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    # robustness
    "fgsm",
    "fgsm_accuracy",
    "accuracy_vs_epsilon",
    "noise_accuracy",
    "pgd",
    "transfer_pgd",
    "square_attack",
    "attack_suite",
    "AttackSettings",
    # the main job
    "CompareConfig",
    "compare",
    "format_table",
    # the stability job and its measurements
    "StabilityConfig",
    "stability",
    "analysis",
    # the robustness job
    "RobustnessConfig",
    "robustness",
    # the time-series job
    "TimeseriesConfig",
    "timeseries",
]

__version__ = "0.1.0"
