"""Training: the views' solver settings, the one training loop, seeds and devices,
resumable atomic checkpoints and DDP under ``torchrun``.

- ``_views``: the three views of one field (:data:`VIEWS`), field families, model building;
- ``_runtime``: seeds, RNG states, devices;
- ``_distributed``: process groups and per-rank shards;
- ``_tasks``: what the loop needs from a problem (:class:`AbstractTask`;
  :class:`ClassificationTask` for a DataBundle) and :func:`evaluate`;
- ``_series_tasks``: sequence classification and interpolation/extrapolation (MSE, ELBO) of time series;
- ``_loop``: :func:`fit`, the one training loop (metrics files, checkpoints, resume);
- ``_robust``: kinetic/Jacobian regularisation and solver-robust training (drawn solvers);
- ``_run``: :func:`train` from a :class:`TrainConfig`, and :func:`load_model`.
"""

from ._loop import LR_SCHEDULES, TrainingError, TrainResult, fit, scheduled_lr
from ._robust import SOLVER_FAMILIES, DynamicsRegularizer, SolverSampler
from ._run import TrainConfig, load_model, train
from ._tasks import AbstractTask, ClassificationTask, as_task, evaluate
from ._series_tasks import SequenceClassificationTask, SeriesRegressionTask, series_task
from ._runtime import get_rng_state, resolve_device, set_rng_state, set_seed
from ._views import FIELDS, SOLVER_KEYS, VIEWS, build_view_model, check_model_matches_data, field_arch, solver_config_for

__all__ = ["VIEWS", "FIELDS", "SOLVER_KEYS", "field_arch", "solver_config_for", "build_view_model",
           "check_model_matches_data", "TrainConfig", "TrainResult", "TrainingError", "train", "fit",
           "evaluate", "load_model", "AbstractTask", "ClassificationTask", "as_task", "SequenceClassificationTask", "SeriesRegressionTask", "series_task", "set_seed", "get_rng_state", "set_rng_state", "resolve_device",
           "LR_SCHEDULES", "scheduled_lr", "DynamicsRegularizer", "SolverSampler", "SOLVER_FAMILIES"]
