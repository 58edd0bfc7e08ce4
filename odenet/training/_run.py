"""``train(config)``: one view of one field on one data set, from a config object; and
``load_model`` for a trained checkpoint."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..data._classification import load_dataset
from .._io import CheckpointError, load_checkpoint
from ._runtime import set_seed
from ._views import VIEWS, _model_api, build_view_model, field_arch
from ._loop import TrainResult, fit
from ._tasks import ClassificationTask
from ._robust import DynamicsRegularizer, SolverSampler

@dataclass
class TrainConfig:
    """Settings of :func:`train` (and of ``odenet train``).

    ``model`` is the view: ``"resnet"`` (Euler, fixed steps), ``"implicit"``
    (backward Euler with a root finder) or ``"node"`` (dopri5, checkpointed adjoint). The
    ``method``/``steps``/``rtol``/``atol``/``gradient``/``root_finder`` fields
    override that view's solver settings when not ``None``. ``field`` (``"parabolic"``,
    the default, or ``"unconstrained"``) and ``expansion`` choose the vector field;
    ``head`` the image classifier's head (``"pool"`` or ``"flatten"``). ``lr_schedule``:
    ``"constant"``, ``"cosine"`` or ``"onecycle"`` (see :func:`odenet.fit`). ``kinetic`` and
    ``jacobian_reg`` weight the :class:`odenet.DynamicsRegularizer` penalties (0: off).
    ``label_smoothing`` (in ``[0, 1)``, 0: off) smooths the training targets
    (:class:`odenet.training.ClassificationTask`).
    ``layers`` > 1 makes the field a :class:`odenet.LayerwiseField` of that many blocks (an
    untied ResNet under Euler with ``steps`` a multiple of it), ``interpolation`` and
    ``layer_init`` its time interpolation and initialisation, and ``smoothness`` weights its
    depth-smoothness penalty (0: off; a positive weight needs ``layers`` > 1).
    ``robust``: a solver family name (:data:`odenet.SOLVER_FAMILIES`) for solver-robust
    training, a share ``robust_p`` of the batches under a solver drawn from it
    (:class:`odenet.SolverSampler`); ``None`` (default) trains under the view's own solver only.
    """

    model: str = "resnet"
    data: str = "digits"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    width: int = 32
    spectral_norm: bool = False
    field: str = "parabolic"
    expansion: float | None = None
    augment: int = 0
    out: str | None = "runs/train"
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    method: str | None = None
    steps: int | None = None
    rtol: float | None = None
    atol: float | None = None
    gradient: str | None = None
    root_finder: str | None = None
    head: str = "pool"
    lr_schedule: str = "constant"
    kinetic: float = 0.0
    jacobian_reg: float = 0.0
    label_smoothing: float = 0.0
    robust: str | None = None
    robust_p: float = 0.5
    layers: int = 1
    interpolation: str = "constant"
    layer_init: str | None = None
    smoothness: float = 0.0

    def solver_overrides(self) -> dict:
        return dict(method=self.method, steps=self.steps, rtol=self.rtol, atol=self.atol,
                    gradient=self.gradient, root_finder=self.root_finder)


def train(config: TrainConfig | None = None, **kwargs: Any) -> TrainResult:
    """Build the model for ``config.model`` on ``config.data`` and train it.

    Pass a :class:`TrainConfig` or its fields as keywords. The initial weights
    depend only on ``seed`` and the architecture, so the three views start from
    identical weights for the same seed.

    Examples
    --------
    >>> result = odenet.train(model="resnet", data="circles", epochs=2, out=None)  # doctest: +SKIP
    >>> result.metrics[-1]["test_acc"]  # doctest: +SKIP
    """
    if config is None:
        config = TrainConfig(**kwargs)
    elif kwargs:
        config = TrainConfig(**{**asdict(config), **kwargs})
    if config.model not in VIEWS:
        raise ValueError(f"unknown model {config.model!r}; choose one of {', '.join(VIEWS)}")
    data = load_dataset(config.data, seed=config.seed, limit_train=config.limit_train,
                        limit_test=config.limit_test)
    task = ClassificationTask(data, label_smoothing=config.label_smoothing)  # (validates it first)
    set_seed(config.seed)
    arch = {"augment": config.augment} if config.augment else {}
    arch["spectral_norm"] = bool(config.spectral_norm)
    arch.update(field_arch(config.field, config.expansion))
    arch["head"] = config.head
    if config.layers != 1 or config.interpolation != "constant" or config.layer_init is not None:
        arch.update(layers=config.layers, interpolation=config.interpolation, layer_init=config.layer_init)
    model = build_view_model(config.model, data, width=config.width,
                             solver=config.solver_overrides(), **arch)
    run_cfg = dict(model=config.model, data=config.data, seed=config.seed,
                   batch_size=config.batch_size, lr=float(config.lr),
                   weight_decay=float(config.weight_decay), limit_train=config.limit_train,
                   limit_test=config.limit_test, lr_schedule=config.lr_schedule)
    if config.label_smoothing:  # (absent when 0, as in the task's own run config)
        run_cfg["label_smoothing"] = task.label_smoothing
    sampler = (SolverSampler(config.robust, p=config.robust_p, seed=config.seed)
               if config.robust is not None else None)
    reg = (DynamicsRegularizer(model, kinetic=config.kinetic, jacobian=config.jacobian_reg,
                               smoothness=config.smoothness)
           if (config.kinetic or config.jacobian_reg or config.smoothness) else None)
    try:
        return fit(model, task, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                   weight_decay=config.weight_decay, seed=config.seed, device=config.device,
                   out=config.out, resume=config.resume, overwrite=config.overwrite,
                   quiet=config.quiet, run_config=run_cfg, label=None,
                   lr_schedule=config.lr_schedule, solver_sampler=sampler, regularizer=reg)
    finally:
        if reg is not None:
            reg.remove()


def load_model(path: str | os.PathLike, *, map_location: Any = "cpu", **solver: Any) -> nn.Module:
    """Rebuild a trained model from a checkpoint written by :func:`train`.

    Parameters
    ----------
    path : path
        ``checkpoint.pt`` of a run.
    map_location : optional
        Where to put the weights.
    **solver
        Solver settings applied with ``configure_solver`` after loading (e.g.
        ``method="dopri5"`` to evaluate a trained ResNet as a Neural ODE).

    A run trained with ``fit(..., ema_decay=...)`` loads its weight average: the weights
    its reported metrics were measured with (the checkpoint also keeps the live weights,
    from which ``resume`` continues).
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    api = _model_api()
    cls = getattr(api, ckpt["model_kind"], None)
    if cls is None or not isinstance(cls, type):
        raise CheckpointError(f"checkpoint {path} holds an unknown model class {ckpt['model_kind']!r}")
    model = cls(**ckpt["model_config"])
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit its own model config: {exc}") from exc
    avg = ckpt.get("ema_state")
    if avg is not None:  # a run with ema_decay: its metrics were measured with the average
        params = [p for p in model.parameters() if p.is_floating_point()]
        if not isinstance(avg, (list, tuple)) or len(avg) != len(params) or any(
                not isinstance(a, torch.Tensor) or a.shape != p.shape for a, p in zip(avg, params)):
            raise CheckpointError(f"checkpoint {path}: its weight average (ema_state) does not fit its own model config")
        with torch.no_grad():
            for p, a in zip(params, avg):
                p.copy_(a)
    if solver:
        model.configure_solver(**solver)
    return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model
