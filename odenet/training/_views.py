"""The three views of one vector field: their solver settings, the field families and
the model a view builds for a data set."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ..data._classification import DataBundle


#: Solver settings of the three views of one vector field. Every key is given so
#: that switching views never inherits a setting from the previous one.
VIEWS: dict[str, dict[str, Any]] = {
    "resnet": dict(method="euler", steps=4, rtol=1e-3, atol=1e-4, gradient="direct",
                   options=None),
    # Newton-Krylov stepping by the parabolic field's Fourier preconditioner (quasi-Newton, no
    # GMRES forward; GMRES with P^-T for the gradient); a field without one (--field
    # unconstrained) falls back to GMRES with finite-difference JVPs. docs/three-views.md,
    # "Implicit view cost"
    "implicit": dict(method="implicit_euler", steps=4, rtol=1e-3, atol=1e-4, gradient="direct",
                     options={"root_finder": "newton_krylov", "root_rtol": 1e-3, "root_atol": 1e-4,
                              "jvp": "finite_difference", "preconditioner": "auto",
                              "linear_solver": "preconditioner"}),
    # the checkpointed adjoint, not the plain one: a trained parabolic field is strongly
    # dissipative and the plain adjoint's backwards-rebuilt state (and gradient) goes wrong
    # (it now says so: solvers.AdjointRebuildError); see docs/gradients.md
    "node": dict(method="dopri5", steps=None, rtol=1e-3, atol=1e-4, gradient="checkpointed_adjoint",
                 options=None),
}

#: Model-config keys that describe the solver, not the weights: they may differ
#: between a checkpoint and the model it is loaded into.
SOLVER_KEYS = ("method", "steps", "rtol", "atol", "gradient", "options", "solver", "solver_cfg",
               "solver_config")



# ----------------------------------------------------------------------------- models

def solver_config_for(view: str, **overrides: Any) -> dict:
    """The solver settings of a view, with ``None``-valued overrides ignored.

    Parameters
    ----------
    view : {"resnet", "implicit", "node"}
    **overrides
        ``method``, ``steps``, ``rtol``, ``atol``, ``gradient``, ``options`` or
        ``root_finder`` (merged into ``options``).
    """
    if view not in VIEWS:
        raise ValueError(f"unknown model {view!r}; choose one of {', '.join(VIEWS)}")
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VIEWS[view].items()}
    root_finder = overrides.pop("root_finder", None)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise TypeError(f"unknown solver setting(s) {sorted(unknown)}; "
                        f"allowed: {sorted(cfg) + ['root_finder']}")
    method_changed = overrides.get("method") not in (None, cfg["method"])
    for key, value in overrides.items():
        if value is not None:
            cfg[key] = value
    if method_changed and overrides.get("options") is None:
        cfg["options"] = None  # a root finder means nothing to another method
    if method_changed and overrides.get("steps") is None and view == "node":
        cfg["steps"] = 4  # fixed-step methods need a step count; the node view has none
    if root_finder is not None:
        cfg["options"] = dict(cfg["options"] or {}, root_finder=root_finder)
        if root_finder not in ("newton_krylov", "auto"):
            for key in ("jvp", "preconditioner", "linear_solver"):  # Newton-Krylov's own: mean nothing to another finder
                cfg["options"].pop(key, None)
    return cfg


def _model_api():
    from ..models import _classifiers as _models  # imported lazily: the model layer imports this package
    return _models


def build_view_model(view: str, data: DataBundle, *, width: int = 32, solver: Mapping | None = None,
                     **arch: Any) -> nn.Module:
    """Build the classifier for ``data`` with the solver settings of ``view``.

    Image data gets :class:`odenet.ImageClassifier` (``width`` channels), 2-D data
    :class:`odenet.MLPClassifier` (``width`` hidden units). ``solver`` holds
    overrides passed to :func:`solver_config_for`; ``arch`` extra architecture
    keywords (``augment``, ``spectral_norm``, ``field``, ``expansion``, ...); ``field`` is
    ``"parabolic"`` or ``"unconstrained"`` (:class:`ConvField` / :class:`MLPField`) or a
    model's own field name.
    """
    if not isinstance(data, DataBundle):
        raise TypeError(f"data must be a DataBundle from odenet.load_dataset, got {type(data).__name__}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    cfg = solver_config_for(view, **dict(solver or {}))
    kwargs = data.model_kwargs()
    kwargs["width" if data.kind == "image" else "hidden"] = width
    arch = dict(arch)
    if arch.get("field") == "unconstrained":  # the family's free field: ConvField or MLPField
        arch["field"] = "conv" if data.kind == "image" else "mlp"
    if arch.get("field") == "parabolic" and data.kind != "image":
        arch.setdefault("depth", 1)  # a parabolic MLP field has one hidden layer
    if data.kind != "image":
        arch.pop("head", None)  # the MLP classifier has one head: linear on the state
    kwargs.update(arch)
    return _model_api().build_model(data.kind, **kwargs, **cfg)


def check_model_matches_data(model: nn.Module, data: DataBundle) -> None:
    """Raise :class:`ValueError` if the model's input/output sizes do not fit the data."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, Mapping):
        return
    want = data.model_kwargs()
    for key, value in want.items():
        if key in cfg and cfg[key] != value:
            raise ValueError(f"model has {key}={cfg[key]} but dataset {data.name!r} needs "
                             f"{key}={value}; build the model from the data "
                             "(odenet.build_view_model) or pick matching data")



FIELDS = ("parabolic", "unconstrained")
"""Kinds of shared vector field the views can be built on (``--field`` of ``odenet compare``)."""


#: The parabolic field's default ``expansion``: with the views' 4 steps over [0, 1],
#: ``h * expansion = 0.5``, so every backward Euler step is uniquely solvable.
DEFAULT_EXPANSION = 2.0


def field_arch(field: str, expansion: float | None = None) -> dict:
    """Architecture keywords of a field family (validated); ``expansion=None``: the default."""
    if field not in FIELDS:
        raise ValueError(f"unknown field {field!r}; choose one of {', '.join(FIELDS)}")
    if field == "parabolic":
        return {"field": field, "expansion": DEFAULT_EXPANSION if expansion is None else float(expansion)}
    if expansion:
        raise ValueError(f"`expansion` applies to the parabolic field only; with field={field!r} pass "
                         f"expansion=0, got {expansion!r}")
    return {"field": field}
