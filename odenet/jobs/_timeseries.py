"""The ``timeseries`` job: irregular time series with missing observations, six model families.

One pipeline: config -> data -> for every (data set, drop rate, model): build, train with the
one training loop (:func:`odenet.fit`), evaluate -> report (table on stdout, ``results.json``
with a ``runs`` list, PNGs). Data names: any classification set bundled in the UEA/UCR
archive (:func:`odenet.data.load_uea`; JapaneseVowels by default), ``sines`` (Rubanova's
periodic sines, extrapolation), ``sines_interp`` (interpolation) and ``spirals``
(classification). Drop rates apply to the classification sets; the sines keep 50% of
their points by construction (reported as drop 0.5).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from .._io import write_json
from ..data._irregular import SeriesData
from ..data._synthetic_series import periodic_sines, spiral_series
from ..data._uea import load_uea, uea_datasets
from ..models._series_registry import ODE_SERIES_MODELS, SERIES_MODELS, build_series_model
from ..training._loop import LR_SCHEDULES, fit
from ..training._runtime import resolve_device, set_seed
from ..training._series_tasks import series_task

__all__ = ["TimeseriesConfig", "timeseries", "format_series_table", "load_series_data"]

_SYNTHETIC = ("sines", "sines_interp", "spirals")
_SOLVER_FIELDS = ("method", "steps", "rtol", "atol", "gradient")
#: settings of :class:`odenet.models.LatentODE` that ``latent_ode`` (``--latent-ode``) may set, and their types
LATENT_ODE_OPTIONS = {"latent": int, "units": int, "n_samples": int, "kl_warmup": int, "obs_std": float,
                      "kl_weight": float}


def latent_ode_problem(key: str, value) -> Optional[str]:
    """Why ``value`` is not a valid value of the Latent ODE setting ``key`` (one of
    :data:`LATENT_ODE_OPTIONS`), or None; shared by the job's config and ``--latent-ode``."""
    if LATENT_ODE_OPTIONS[key] is int:
        low = 1 if key in ("latent", "units", "n_samples") else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            return f"{key} must be an integer >= {low}, got {value!r}"
    elif (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) < float("inf")
          or (key == "obs_std" and not value > 0)):
        return f"{key} must be a {'positive' if key == 'obs_std' else 'non-negative'} finite number, got {value!r}"
    return None


@dataclass
class TimeseriesConfig:
    """Settings of :func:`timeseries` (and of ``odenet timeseries``).

    Attributes
    ----------
    data : sequence of str
        Data sets: UEA/UCR names (e.g. ``JapaneseVowels``), ``sines``, ``sines_interp``, ``spirals``.
    drop : sequence of float
        Fractions of each series' observations removed (classification sets).
    models : sequence of str
        From ``ode_rnn, latent_ode, gru_ode, ncde, gru_dt, gru_d``.
    epochs : int, optional
        Epochs for every run (default: ``epochs_classification`` / ``epochs_regression``).
    n_sines : int
        Number of periodic-sines series (Rubanova: 1000).
    hidden, batch_size, batch_size_regression, lr, seed, device, out, quiet, plots, threads
        Training and output settings; ``threads`` sets torch's CPU threads during the job
        (these models are many small ops: one thread is fastest on a shared CPU; 0 keeps
        torch's setting).
    time_scale : float
        Time between two samples of a UEA/UCR series (default 0.1: a series of 29 samples
        spans [0, 2.8]); chosen on a validation split carved from JapaneseVowels' training
        set (docs/timeseries.md). The synthetic sets keep their own times.
    lr_schedule : str or mapping
        Learning-rate schedule of :func:`odenet.fit` (``constant``, ``cosine``, ``onecycle``) for
        every model, or a mapping ``{model: schedule}`` (models not named: ``constant``), so that
        each model trains at its own schedule in one run (docs/timeseries.md, periodic sines).
    weight_decay : float
        Adam's L2 weight decay (default 0).
    ema_decay : float in (0, 1), optional
        Evaluate and return an exponential moving average of the weights
        (:func:`odenet.fit`'s ``ema_decay``; default None: the last weights).
    latent_ode : mapping
        Constructor settings of the Latent ODE only (:class:`odenet.models.LatentODE`): any of
        ``latent``, ``units``, ``n_samples``, ``kl_warmup`` (integers), ``obs_std``, ``kl_weight``
        (numbers), e.g. ``{"n_samples": 3}``; default empty: the class's defaults. Each run
        records the ones it got as ``model_options`` in ``results.json``.
    method, steps, rtol, atol, gradient : optional
        Override the ODE models' solver configuration (default rk4, one step per gap).
    """

    data: Sequence[str] = ("JapaneseVowels", "sines")
    drop: Sequence[float] = (0.3,)
    models: Sequence[str] = tuple(SERIES_MODELS)
    epochs: Optional[int] = None
    epochs_classification: int = 20
    epochs_regression: int = 5
    n_sines: int = 1000
    hidden: int = 32
    batch_size: int = 32
    batch_size_regression: int = 64
    lr: float = 1e-2
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/timeseries"
    quiet: bool = False
    plots: bool = True
    threads: int = 1
    time_scale: float = 0.1
    lr_schedule: Union[str, Mapping[str, str]] = "constant"
    weight_decay: float = 0.0
    ema_decay: Optional[float] = None
    latent_ode: Mapping[str, Union[int, float]] = field(default_factory=dict)
    method: Optional[str] = None
    steps: Optional[int] = None
    rtol: Optional[float] = None
    atol: Optional[float] = None
    gradient: Optional[str] = None
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None

    def validate(self) -> None:
        if isinstance(self.models, str) or not self.models:
            raise ValueError(f"models must be a non-empty list from {', '.join(SERIES_MODELS)}")
        bad = [m for m in self.models if m not in SERIES_MODELS]
        if bad:
            raise ValueError(f"unknown model name(s) {bad}; choose from {', '.join(SERIES_MODELS)}")
        if isinstance(self.data, str) or not self.data:
            raise ValueError("data must be a non-empty list of data set names")
        if not self.drop or any(not 0 <= float(r) < 1 for r in self.drop):
            raise ValueError(f"drop rates must lie in [0, 1), got {list(self.drop)}")
        for name in ("epochs", "epochs_classification", "epochs_regression", "n_sines", "hidden", "batch_size",
                     "batch_size_regression"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.time_scale, bool) or not (isinstance(self.time_scale, (int, float))
                                                     and 0 < float(self.time_scale) < float("inf")):
            raise ValueError(f"time_scale must be a positive finite number, got {self.time_scale!r}")
        self.schedule_of(self.models[0])  # raises on a bad lr_schedule
        if isinstance(self.weight_decay, bool) or not (isinstance(self.weight_decay, (int, float))
                                                       and 0 <= float(self.weight_decay) < float("inf")):
            raise ValueError(f"weight_decay must be a non-negative finite number, got {self.weight_decay!r}")
        if self.ema_decay is not None and (isinstance(self.ema_decay, bool) or not isinstance(
                self.ema_decay, (int, float)) or not 0 < self.ema_decay < 1):
            raise ValueError(f"ema_decay must be a number in (0, 1) (e.g. 0.9) or None, got {self.ema_decay!r}")
        self._check_latent_ode()
        for name in self.data:
            if name not in _SYNTHETIC and name not in uea_datasets():
                load_uea(name)  # raises, listing close matches

    def _check_latent_ode(self) -> None:
        opts = self.latent_ode
        if not isinstance(opts, Mapping):
            raise ValueError(f"latent_ode must be a mapping of LatentODE settings, got {opts!r}")
        bad = [k for k in opts if k not in LATENT_ODE_OPTIONS]
        if bad:
            raise ValueError(f"latent_ode names unknown setting(s) {bad}; choose from {', '.join(LATENT_ODE_OPTIONS)}")
        for k, v in opts.items():
            problem = latent_ode_problem(k, v)
            if problem is not None:
                raise ValueError(f"latent_ode {problem}")

    def schedule_of(self, model: str) -> str:
        """The learning-rate schedule of ``model`` (:attr:`lr_schedule`); bad settings raise ``ValueError``."""
        sched = self.lr_schedule
        if isinstance(sched, str):
            table = {m: sched for m in SERIES_MODELS}
        elif isinstance(sched, Mapping):
            bad = [m for m in sched if m not in SERIES_MODELS]
            if bad:
                raise ValueError(f"lr_schedule names unknown model(s) {bad}; choose from {', '.join(SERIES_MODELS)}")
            table = {m: sched.get(m, "constant") for m in SERIES_MODELS}
        else:
            raise ValueError(f"lr_schedule must be a schedule name or a {{model: schedule}} mapping, got {sched!r}")
        bad = sorted({v for v in table.values() if v not in LR_SCHEDULES}, key=str)
        if bad:
            raise ValueError(f"unknown lr_schedule {bad}; choose from {', '.join(LR_SCHEDULES)}")
        return table[model]


def load_series_data(name: str, *, seed: int = 0, n_sines: int = 1000, time_scale: float = 1.0) -> SeriesData:
    """A data set of the job by name (see the module docstring); unknown names list close matches.

    ``time_scale`` is the time between two samples of a UEA/UCR set (the synthetic sets keep theirs)."""
    if name == "sines":
        return periodic_sines(n_sines, task="extrapolation", seed=seed)
    if name == "sines_interp":
        return periodic_sines(n_sines, task="interpolation", seed=seed)
    if name == "spirals":
        return spiral_series(seed=seed)
    return load_uea(name, time_scale=time_scale)


def _limit(d: SeriesData, n_train: Optional[int], n_test: Optional[int]) -> SeriesData:
    if not n_train and not n_test:
        return d
    tr = torch.arange(min(n_train or len(d.train), len(d.train)))
    te = torch.arange(min(n_test or len(d.test), len(d.test)))
    kw = dict(train=d.train.index(tr), test=d.test.index(te))
    if d.y_train is not None:
        kw.update(y_train=d.y_train[tr], y_test=d.y_test[te])
    else:
        kw.update(target_train=d.target_train.index(tr), target_test=d.target_test.index(te))
    return SeriesData(**{**d.__dict__, **kw})


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="odenet timeseries", disable=not enabled, dynamic_ncols=True)


def timeseries(config: TimeseriesConfig | None = None, **kwargs: Any) -> dict:
    """Train and evaluate time-series models; write the table, ``results.json`` and PNGs.

    Pass a :class:`TimeseriesConfig` or its fields as keywords. Returns the results dict
    (also in ``<out>/results.json``): ``runs`` is a list with one entry per
    (data, task, drop, model) holding ``data``, ``task``, ``drop``, ``model``,
    ``test_accuracy`` or ``test_mse``, ``train_time_s``, ``nfe_forward_per_batch``,
    ``nfe_backward_per_batch`` and ``history``.
    """
    if config is None:
        config = TimeseriesConfig(**kwargs)
    elif kwargs:
        config = TimeseriesConfig(**{**asdict(config), **kwargs})
    config.validate()
    out = Path(config.out)
    if out.exists() and not out.is_dir():  # checked before any work
        raise ValueError(f"--out {out} exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    say = (lambda *a: None) if config.quiet else (lambda *a: print(*a, flush=True))
    solver = {k: getattr(config, k) for k in _SOLVER_FIELDS if getattr(config, k) is not None}
    t_start, c_start = time.perf_counter(), time.process_time()

    with _threads(config.threads):
        # ---- data
        sets = []
        for name in config.data:
            base = _limit(load_series_data(name, seed=config.seed, n_sines=config.n_sines,
                                           time_scale=config.time_scale),
                          config.limit_train, config.limit_test)
            say(f"odenet timeseries: {base.description}")
            rates = list(config.drop) if base.task == "classification" else [float(base.info.get("keep", 0.5))]
            for rate in rates:
                d = base.dropped(rate, seed=config.seed) if base.task == "classification" else base
                sets.append((name, rate if base.task == "classification" else 1 - rate, d))
        runs, histories, preds = [], {}, {}
        bar = _progress(len(sets) * len(config.models), not config.quiet)
        # ---- models -> the one training loop -> evaluation
        for name, rate, data in sets:
            task = series_task(data)
            classify = data.task == "classification"
            epochs = config.epochs or (config.epochs_classification if classify else config.epochs_regression)
            for model_name in config.models:
                set_seed(config.seed)
                options = dict(config.latent_ode) if model_name == "latent_ode" else {}
                model = build_series_model(model_name, data.channels, num_classes=data.num_classes,
                                           hidden=config.hidden, **solver, **options)
                label = f"{name}/{data.task}/drop{rate:g}/{model_name}"
                bar.set_postfix_str(label)
                c0 = time.process_time()
                bs = config.batch_size if classify else config.batch_size_regression
                schedule = config.schedule_of(model_name)
                res = fit(model, task, epochs=epochs, batch_size=bs, lr=config.lr, seed=config.seed,
                          device=str(device), out=None, quiet=True, label=label, lr_schedule=schedule,
                          weight_decay=float(config.weight_decay), ema_decay=config.ema_decay)
                hist = res.metrics
                run = {"data": name, "task": data.task, "drop": float(rate), "model": model_name,
                       "ode": model_name in ODE_SERIES_MODELS,
                       "train_time_s": res.train_time, "cpu_time_s": time.process_time() - c0,
                       "epochs": epochs, "lr_schedule": schedule, "model_options": options,
                       "nfe_forward_per_batch": sum(r["nfe_forward"] for r in hist) / len(hist),
                       "nfe_backward_per_batch": sum(r["nfe_backward"] + r["vjp_backward"] for r in hist) / len(hist),
                       "history": hist}
                run["test_accuracy" if classify else "test_mse"] = hist[-1][f"test_{task.metric}"]
                runs.append(run)
                histories.setdefault((name, data.task), {})[f"{model_name} drop {rate:g}"] = hist
                if not classify:
                    preds.setdefault((name, data.task), (data, {}))[1][model_name] = _predict(res.model, data)
                bar.update(1)
                say(f"[{label}] " + (f"test accuracy {100 * run['test_accuracy']:.2f}%" if classify else
                                     f"test MSE {run['test_mse']:.4g}") + f"  train {res.train_time:.1f}s")
        bar.close()

    report = {"config": asdict(config), "runs": runs, "device": str(device),
              "wall_time_s": time.perf_counter() - t_start, "cpu_time_s": time.process_time() - c_start}
    report["table"] = format_series_table(report)
    if config.plots:
        report["plots"] = _write_plots(out, runs, histories, preds)
    write_json(out / "results.json", report)
    say(report["table"])
    say(f"wall {report['wall_time_s']:.1f}s, process CPU {report['cpu_time_s']:.1f}s; outputs in {out}")
    return report


@torch.no_grad()
def _predict(model, data: SeriesData, n: int = 4):
    model.eval()
    idx = torch.arange(min(n, len(data.test)))
    obs, target = data.test.index(idx), data.target_test.index(idx)
    dev = next(model.parameters()).device
    return obs, target, model.predict(obs.to(dev), target.times.to(dev), target.lengths.to(dev)).cpu()


def _write_plots(out: Path, runs, histories, preds) -> list:
    from ._timeseries_plots import plot_accuracy_vs_drop, plot_series_curves, plot_series_predictions

    files = []
    for (name, task), hist in histories.items():
        metric = "acc" if task == "classification" else "mse"
        files.append(plot_series_curves(hist, metric, out / f"curves_{name}_{task}.png",
                                        title=f"{name} ({task}): training curves"))
    for (name, task), (data, per_model) in preds.items():
        obs, target = next(iter(per_model.values()))[:2]
        files.append(plot_series_predictions(obs, target, {m: p[2] for m, p in per_model.items()},
                                             out / f"predictions_{name}_{task}.png",
                                             title=f"{name} ({task}): test series; dots observed, crosses targets"))
    by_data: dict = {}
    for r in runs:
        if r["task"] == "classification":
            by_data.setdefault(r["data"], {}).setdefault(r["model"], {})[r["drop"]] = r["test_accuracy"]
    for name, curves in by_data.items():
        files.append(plot_accuracy_vs_drop(curves, out / f"accuracy_vs_drop_{name}.png",
                                           title=f"{name}: accuracy vs dropped observations"))
    return [str(f) for f in files]


def format_series_table(report: dict) -> str:
    """The job's table: one row per run."""
    head = f"{'data':<16} {'task':<14} {'drop':>5} {'model':<11} {'test':>10} {'train s':>8} {'NFE fwd':>8} {'NFE bwd':>8}"
    lines = [head, "-" * len(head)]
    for r in report["runs"]:
        score = f"{100 * r['test_accuracy']:.2f}%" if "test_accuracy" in r else f"{r['test_mse']:.4g}"
        lines.append(f"{r['data']:<16} {r['task']:<14} {r['drop']:>5.2f} {r['model']:<11} {score:>10} "
                     f"{r['train_time_s']:>8.1f} {r['nfe_forward_per_batch']:>8.1f} {r['nfe_backward_per_batch']:>8.1f}")
    return "\n".join(lines)
