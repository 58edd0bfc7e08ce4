"""The ``odenet compare`` job: one vector field trained as ResNet, implicit ResNet and Neural ODE.

With the defaults, :func:`compare` loads the digits, builds one image classifier
architecture, draws one initialisation, and trains three copies of it from those
same weights with the same data order: as an explicit ResNet (Euler, 4 steps), an
implicit ResNet (backward Euler, 4 steps, Newton–Krylov root finder) and a Neural ODE
(dopri5 with the checkpointed continuous adjoint). For every trained model it measures test
accuracy, training time, forward and backward function evaluations per batch,
peak memory of one training step, accuracy under FGSM attacks, and accuracy when
evaluated under each of the other solvers; it prints one table and writes
``results.json`` and PNG plots into the output directory.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data._classification import DATASETS, DataBundle, iterate_batches, load_dataset
from .._io import check_out_dir, write_json
from ..robustness._attacks import accuracy_vs_epsilon
from ..robustness._pgd import pgd
from ..training._views import SOLVER_KEYS, VIEWS, build_view_model, field_arch, solver_config_for
from ..training._loop import CHECKPOINT_NAME, LR_SCHEDULES, TrainingError, fit
from ..training._robust import DynamicsRegularizer, SolverSampler
from ..training._tasks import ClassificationTask, check_label_smoothing, evaluate
from ..training._runtime import resolve_device, set_seed

__all__ = ["CompareConfig", "compare", "format_table", "peak_step_memory"]


@dataclass
class CompareConfig:
    """Settings of :func:`compare` (and of ``odenet compare``).

    Attributes
    ----------
    data : str
        Dataset name (default ``"digits"``).
    models : sequence of str
        Views to train, from ``resnet``, ``implicit``, ``node``.
    solvers : sequence of str, optional
        Views every trained model is also evaluated under (default: all three).
    epochs, batch_size, lr, seed, width : optional
        Training settings shared by all models (defaults 8, 32, 2e-2 with the one-cycle
        schedule, 0, 16: chosen by measurement, docs/three-views.md).
    limit_train, limit_test : int, optional
        Use only this many training/test samples (for quick runs).
    epsilons : sequence of float
        FGSM and PGD sizes, as fractions of the input range.
    pgd_steps, pgd_points : int
        The PGD attack (l-infinity, random start, step ``2.5 eps / steps``; see
        :func:`odenet.robustness.pgd`) at every non-zero epsilon: its number of steps and
        the size of the fixed test subset it attacks (the first ``pgd_points`` test
        inputs; ``odenet robustness`` runs the full protocol). 0 skips it.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (default: CUDA where available).
    out : str
        Output directory for ``results.json``, the PNGs and per-model runs (``out/<view>``).
    resume : bool
        Continue an interrupted job: each view resumes from its own ``out/<view>/checkpoint.pt``
        (a view whose checkpoint has all epochs is not trained again, only measured); a view
        without a checkpoint starts afresh. Default False: every view starts afresh and its
        earlier run in ``out`` is overwritten.
    quiet : bool
        Print only the final table.
    plots : bool
        Write the PNGs.
    field : {"parabolic", "unconstrained"}
        The shared vector field. ``"parabolic"`` (default): :class:`odenet.ParabolicConvField`,
        whose one-sided Lipschitz constant is at most ``expansion`` whatever its weights, so
        every backward Euler step of the implicit view (``h = 1/4``) has exactly one
        solution. ``"unconstrained"``: :class:`odenet.ConvField`; its implicit view fails
        once training drives ``h * |J_f|`` past 1 (see docs/three-views.md).
    expansion : float, optional
        The parabolic field's bound (default 0.0: the flow never expands, and the Newton
        matrix ``I - h J`` of every backward Euler step has symmetric part ``>= I``;
        ``None``: the library default 2.0).
    spectral_norm : bool
        Spectrally normalise the shared field's convolutions (default True: with
        ``expansion=0`` it keeps ``h |J_f|`` near 1 through training, which keeps the
        implicit view's Newton–Krylov solves short, the Neural ODE's step count flat and
        the trained models transferable between views; see docs/three-views.md).
    head : {"pool", "flatten"}
        The image classifier's head (default ``"flatten"``; see :class:`odenet.ImageClassifier`).
    lr_schedule : {"constant", "cosine", "onecycle"}
        Learning-rate schedule over all batches, ``lr`` its peak (default ``"onecycle"``;
        see :func:`odenet.fit`).
    label_smoothing : float
        Label smoothing of every view's training loss, in ``[0, 1)`` (default 0.1: with the
        peak learning rate 2e-2 it lifts every view from 96.1-96.7 % to >= 97 % on digits
        at no cost per epoch; see docs/three-views.md and :class:`odenet.training.ClassificationTask`).
    kinetic, jacobian_reg : float
        Weights of the kinetic-energy and Jacobian-Frobenius penalties on every view's
        field (:class:`odenet.DynamicsRegularizer`; defaults 1e-4 and 0: the small kinetic
        penalty keeps the field from stiffening at lr 2e-2, so the Neural ODE's step count
        and the implicit view's root iterations stay flat through training; 0: off).
    plain : bool
        Default True: train every view only under its own solver. False (``odenet compare
        --robust``): solver-robust training, each batch under a solver drawn from
        ``robust_family`` with probability ``robust_p`` (:class:`odenet.SolverSampler`; see
        docs/three-views.md, "Training for solver swaps").
    robust_family : str
        A name from :data:`odenet.SOLVER_FAMILIES` (default ``"explicit"``).
    robust_p : float
        Share of batches trained under a drawn solver.
    """

    data: str = "digits"
    models: Sequence[str] = ("resnet", "implicit", "node")
    solvers: Sequence[str] | None = None
    epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-2
    seed: int = 0
    width: int = 16
    field: str = "parabolic"
    expansion: float | None = 0.0
    spectral_norm: bool = True
    limit_train: int | None = None
    limit_test: int | None = None
    epsilons: Sequence[float] = (0.0, 0.02, 0.05, 0.1)
    pgd_steps: int = 10
    pgd_points: int = 128
    device: str = "auto"
    out: str = "runs/compare"
    quiet: bool = False
    plots: bool = True
    resume: bool = False
    head: str = "flatten"
    lr_schedule: str = "onecycle"
    label_smoothing: float = 0.1
    kinetic: float = 1e-4
    jacobian_reg: float = 0.0
    plain: bool = True
    robust_family: str = "explicit"
    robust_p: float = 0.5

    def validate(self) -> None:
        for arg in ("models", "solvers"):
            names = getattr(self, arg)
            if names is None:
                continue
            if isinstance(names, str) or not names:
                raise ValueError(f"{arg} must be a non-empty list of names from {', '.join(VIEWS)}")
            bad = [n for n in names if n not in VIEWS]
            if bad:
                raise ValueError(f"unknown {arg[:-1]} name(s) {bad}; choose from {', '.join(VIEWS)}")
            if len(set(names)) != len(names):
                raise ValueError(f"{arg} lists a name twice: {list(names)}")
        if self.data not in DATASETS:
            raise ValueError(f"unknown dataset {self.data!r}; choose one of {', '.join(DATASETS)}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        eps = list(self.epsilons)
        if not eps or any(isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e <= 1
                          for e in eps):
            raise ValueError(f"epsilons must be FGSM sizes in [0, 1] (fractions of the input range), "
                             f"got {eps!r}")
        for arg in ("pgd_steps", "pgd_points"):
            v = getattr(self, arg)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{arg} must be an integer >= 0 (0 skips the PGD attack), got {v!r}")
        check_out_dir(self.out)
        field_arch(self.field, self.expansion)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        check_label_smoothing(self.label_smoothing)
        if not self.plain:
            SolverSampler(self.robust_family, p=self.robust_p)  # validates both


@contextlib.contextmanager
def _silence_fds():
    """Send the C-level stdout/stderr to /dev/null (the profiler prints there)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
            except OSError:
                pass
        yield
    finally:
        for fd, copy_fd in saved:
            os.dup2(copy_fd, fd)
            os.close(copy_fd)
        os.close(devnull)


def peak_step_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, str]:
    """Peak memory of one training step (forward, loss, backward), in MiB.

    On CUDA this is ``torch.cuda.max_memory_allocated`` during the step minus the
    memory allocated before it. On CPU it is the peak of the running sum of
    tensor allocations and frees recorded by ``torch.profiler`` with
    ``profile_memory=True`` during the step (tensor memory only, above what was
    allocated before the step). The gradients it produces are discarded.

    Returns
    -------
    (float, str)
        The peak in MiB and a short description of how it was measured.
    """
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
            return peak / 2**20, "torch.cuda.max_memory_allocated, one training step"
        from torch.profiler import ProfilerActivity, profile

        with _silence_fds():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        cur = peak = 0
        for e in events:
            cur += e.nbytes()
            peak = max(peak, cur)
        return peak / 2**20, "CPU tensor allocations traced by torch.profiler, one training step"
    finally:
        model.zero_grad(set_to_none=True)


def _solver_error_types() -> tuple[type, ...]:
    try:
        import solvers

        return (solvers.SolverError,)
    except (ImportError, AttributeError):  # pragma: no cover - solvers is a hard dependency
        return ()


def _cross_eval(model: nn.Module, data: DataBundle, own: dict, solvers_: Sequence[str],
                batch_size: int, known: dict | None = None) -> tuple[dict, dict]:
    """Accuracy of ``model`` under each view's solver; the model's own solver is restored.

    ``known`` maps views whose accuracy is already measured (the model's own) to it.
    """
    accs, errors = {}, {}
    # A field trained for one solver may defeat another (a root finder that does not converge,
    # a step size that underflows): that numerical failure is reported in the table, not fatal.
    # Anything else (out of memory, a bug) propagates.
    errs = _solver_error_types()
    try:
        for s in solvers_:
            if known and s in known:
                accs[s] = known[s]
                continue
            model.configure_solver(**solver_config_for(s))
            try:
                ev = evaluate(model, data.x_test, data.y_test, batch_size=batch_size)
                if not math.isfinite(ev["loss"]):
                    accs[s], errors[s] = float("nan"), "non-finite output"
                else:
                    accs[s] = ev["accuracy"]
            except errs as exc:  # a field trained for one solver may defeat another
                accs[s], errors[s] = float("nan"), f"{type(exc).__name__}: {exc}"
    finally:
        model.configure_solver(**own)
    return accs, errors


def pgd_accuracy(model: nn.Module, data: DataBundle, epsilons: Sequence[float], *, steps: int,
                 n_points: int, seed: int = 0, batch_size: int = 128) -> dict:
    """Accuracy under PGD at every non-zero epsilon (raw units) on the first ``n_points``
    test inputs, attacked through the model's own solver: ``{str(eps): accuracy}``
    (empty when ``steps`` or ``n_points`` is 0). The random starts come from a generator
    seeded with ``seed``."""
    eps = [e for e in epsilons if e > 0]
    if not steps or not n_points or not eps:
        return {}
    x, y = data.x_test[:n_points], data.y_test[:n_points]
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    clamp = data.normalised_range()
    was_training = model.training
    model.eval()
    out = {}
    try:
        for e in eps:
            correct = 0
            for xb, yb in iterate_batches(x, y, batch_size):
                xb, yb = xb.to(device), yb.to(device)
                x_adv = pgd(model, xb, yb, e / data.std, steps=steps, clamp=clamp, generator=gen)
                with torch.no_grad():
                    correct += int((model(x_adv).argmax(1) == yb).sum())
            out[str(e)] = correct / len(y)
    finally:
        model.train(was_training)
    return out


def compare(config: CompareConfig | None = None, **kwargs: Any) -> dict:
    """Train one vector field under several solvers and compare them.

    Pass a :class:`CompareConfig` or its fields as keywords. Returns the results
    dict also written to ``<out>/results.json``; ``results["models"][view]`` holds
    ``test_accuracy``, ``train_time_s``, ``nfe_forward_per_batch``,
    ``nfe_backward_per_batch``, ``vjp_backward_per_batch``, ``peak_memory_mib``,
    ``fgsm`` (epsilon -> accuracy), ``cross_solver`` (view -> accuracy) and
    ``history`` (metrics per epoch).
    """
    if config is None:
        config = CompareConfig(**kwargs)
    elif kwargs:
        config = CompareConfig(**{**asdict(config), **kwargs})
    config.validate()
    solver_views = list(config.solvers) if config.solvers is not None else list(VIEWS)
    out = Path(config.out)
    device = resolve_device(config.device)
    t_start = time.perf_counter()
    say = (lambda *a: None) if config.quiet else (lambda *a: print(*a, flush=True))

    data = load_dataset(config.data, seed=config.seed, limit_train=config.limit_train,
                        limit_test=config.limit_test)
    say(f"odenet compare: {data.summary()}; models {', '.join(config.models)}; "
        f"{config.epochs} epoch(s); device {device}")
    task = ClassificationTask(data, label_smoothing=config.label_smoothing)
    set_seed(config.seed)
    arch_kw = dict(spectral_norm=bool(config.spectral_norm), head=config.head,
                   **field_arch(config.field, config.expansion))
    base = build_view_model(config.models[0], data, width=config.width, **arch_kw)
    init_state = copy.deepcopy(base.state_dict())
    base_arch = {k: v for k, v in base.config.items() if k not in SOLVER_KEYS}

    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    mem_method = ""
    for view in config.models:
        model = build_view_model(view, data, width=config.width, **arch_kw)
        arch = {k: v for k, v in model.config.items() if k not in SOLVER_KEYS}
        if arch != base_arch:  # the views must share one field architecture
            raise RuntimeError(f"model for {view!r} has architecture {arch}, expected {base_arch}")
        model.load_state_dict(init_state)
        own = solver_config_for(view)
        resume = bool(config.resume) and (out / view / CHECKPOINT_NAME).is_file()
        sampler = None if config.plain else SolverSampler(config.robust_family, p=config.robust_p,
                                                           seed=config.seed)
        reg = (DynamicsRegularizer(model, kinetic=config.kinetic, jacobian=config.jacobian_reg)
               if (config.kinetic or config.jacobian_reg) else None)
        try:
            fit_res = fit(model, task, epochs=config.epochs, batch_size=config.batch_size,
                          lr=config.lr, seed=config.seed, device=str(device), out=out / view,
                          resume=resume, overwrite=not resume, quiet=config.quiet, label=view,
                          lr_schedule=config.lr_schedule, solver_sampler=sampler, regularizer=reg)
        except (TrainingError, *_solver_error_types()) as exc:
            # one view failing numerically (e.g. its implicit solve stops converging as the
            # field grows) must not discard the others: record it, report it, go on
            failed[view] = f"{type(exc).__name__}: {exc}"
            say(f"[{view}] training failed: {failed[view]}")
            continue
        finally:
            if reg is not None:
                reg.remove()
        model = fit_res.model
        hist = fit_res.metrics
        nb = [r for r in hist]
        mem, mem_method = peak_step_memory(model, data.x_train[:config.batch_size],
                                           data.y_train[:config.batch_size])
        fgsm = accuracy_vs_epsilon(model, data, config.epsilons)
        pgd_acc = pgd_accuracy(model, data, config.epsilons, steps=config.pgd_steps,
                               n_points=config.pgd_points, seed=config.seed)
        cross, cross_err = _cross_eval(model, data, own, solver_views, batch_size=256,
                                       known={view: hist[-1]["test_acc"]})
        results[view] = {
            "solver": own,
            "test_accuracy": hist[-1]["test_acc"],
            "test_loss": hist[-1]["test_loss"],
            "train_time_s": fit_res.train_time,
            "nfe_forward_per_batch": sum(r["nfe_forward"] for r in nb) / len(nb),
            "nfe_backward_per_batch": sum(r["nfe_backward"] for r in nb) / len(nb),
            "vjp_backward_per_batch": sum(r["vjp_backward"] for r in nb) / len(nb),
            "peak_memory_mib": mem,
            "fgsm": {str(e): a for e, a in zip(config.epsilons, fgsm)},
            "pgd": pgd_acc,
            "cross_solver": cross,
            "cross_solver_errors": cross_err,
            "history": hist,
        }
        say(f"[{view}] done: test accuracy {100 * results[view]['test_accuracy']:.1f}%, "
            f"{fit_res.train_time:.1f}s training")

    total = time.perf_counter() - t_start
    report = {
        "config": {**asdict(config), "models": list(config.models), "solvers": solver_views,
                   "epsilons": list(config.epsilons)},
        "data": {"name": data.name, "n_train": len(data.y_train), "n_test": len(data.y_test),
                 "input_shape": list(data.input_shape), "num_classes": data.num_classes},
        "model_config": base_arch,
        "device": str(device),
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "memory_method": mem_method,
        "process_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "models": results,
        "failed": failed,
        "total_time_s": total,
    }
    out.mkdir(parents=True, exist_ok=True)
    if config.plots and results:
        from ._plots import (plot_accuracy_vs_epsilon, plot_cross_solver, plot_nfe_per_epoch,
                             plot_training_curves)

        report["plots"] = [
            str(plot_training_curves({v: r["history"] for v, r in results.items()},
                                     out / "training_curves.png",
                                     title=f"{data.name}: one field, three solvers")),
            str(plot_nfe_per_epoch({v: r["history"] for v, r in results.items()},
                                   out / "nfe_per_epoch.png")),
            str(plot_accuracy_vs_epsilon(
                {v: {float(e): a for e, a in r["fgsm"].items()} for v, r in results.items()},
                out / "accuracy_vs_epsilon.png",
                dashed={v: {float(e): a for e, a in r["pgd"].items()} for v, r in results.items()
                        if r["pgd"]},
                labels=("FGSM", f"PGD-{config.pgd_steps}"),
                title="Accuracy under FGSM (solid) and PGD (dashed)")),
            str(plot_cross_solver({v: r["cross_solver"] for v, r in results.items()},
                                  out / "cross_solver.png")),
        ]
    table = format_table(report)
    report["table"] = table
    write_json(out / "results.json", report)
    print(table, flush=True)
    say(f"wrote {out / 'results.json'}" + (" and PNGs" if config.plots else "")
        + f" ({total:.1f}s in all)")
    return report


def _pct(v: float) -> str:
    return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def format_table(report: dict) -> str:
    """The one comparison table of a :func:`compare` report, as text."""
    models = report["models"]
    eps = report["config"]["epsilons"]
    pgd_eps = [e for e in eps if e > 0 and any(r.get("pgd") for r in models.values())]
    solver_views = report["config"]["solvers"]
    head = (["model", "solver", "test acc %", "train s", "NFE fwd", "NFE bwd", "VJP bwd",
             "peak MiB"] + [f"FGSM {e:g}" for e in eps] + [f"PGD {e:g}" for e in pgd_eps]
            + [f"as {s}" for s in solver_views])
    rows = []
    for view, r in models.items():
        s = r["solver"]
        solver = s["method"] + (f"/{s['steps']}" if s.get("steps") else "") + {
            "adjoint": "+adj", "checkpointed_adjoint": "+adj(ckpt)", "checkpoint": "+ckpt"}.get(s.get("gradient"), "")
        rows.append([view, solver, _pct(r["test_accuracy"]), f"{r['train_time_s']:.1f}",
                     f"{r['nfe_forward_per_batch']:.1f}", f"{r['nfe_backward_per_batch']:.1f}",
                     f"{r['vjp_backward_per_batch']:.1f}", f"{r['peak_memory_mib']:.2f}"]
                    + [_pct(r["fgsm"][str(e)]) for e in eps]
                    + [_pct(r.get("pgd", {}).get(str(e), float("nan"))) for e in pgd_eps]
                    + [_pct(r["cross_solver"].get(sv, float("nan"))) for sv in solver_views])
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i >= 2 else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    sep = "-" * len(line(head))
    notes = [
        f"data {report['data']['name']} ({report['data']['n_train']} train / "
        f"{report['data']['n_test']} test), device {report['device']}, "
        f"{report['config']['epochs']} epoch(s), seed {report['config']['seed']}; "
        "all models start from the same weights",
        "NFE fwd/bwd, VJP bwd: vector-field evaluations and vector-Jacobian products per "
        "training batch (mean over training)",
        f"peak MiB: {report['memory_method']}",
        "FGSM e: test accuracy % under an FGSM attack of size e (fraction of the input range)",
        *([f"PGD e: accuracy % under PGD ({report['config'].get('pgd_steps')} steps, random start) on the "
           f"first {min(report['config'].get('pgd_points', 0), report['data']['n_test'])} test inputs"]
          if pgd_eps else []),
        "as X: test accuracy % of the trained model evaluated under view X's solver",
    ]
    errs = [f"{v} as {s}: {m}" for v, r in models.items()
            for s, m in r.get("cross_solver_errors", {}).items()]
    if errs:
        notes.append("failed evaluations ('-'): " + "; ".join(errs))
    for v, m in report.get("failed", {}).items():
        notes.append(f"{v}: training FAILED ({m})")
    return "\n".join([sep, line(head), sep] + [line(r) for r in rows] + [sep] + notes)
