"""Training loop: seeds, evaluation, metrics files, atomic checkpoints, resume and DDP.

One vector field, three *views* of it (:data:`VIEWS`): an explicit ResNet (Euler
with fixed steps), an implicit ResNet (backward Euler solved by a root finder) and
a continuous Neural ODE (adaptive dopri5 trained with the checkpointed adjoint). :func:`train`
builds a model for a view and trains it; :func:`fit` trains any classifier.

Runs are deterministic: every random source is seeded, the per-epoch shuffle is
drawn from a generator seeded with ``seed + epoch`` (as
:class:`torch.utils.data.distributed.DistributedSampler` does), and a checkpoint
written after every epoch holds the weights, the optimiser state, all RNG states
and the metrics so far, so that an interrupted run resumed with ``resume=True``
ends with exactly the weights and metrics of an uninterrupted one.

Under ``torchrun --nproc_per_node=N`` (environment variable ``WORLD_SIZE > 1``) the
model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (gloo on
CPU, nccl on CUDA), each rank trains on its shard of every epoch and only rank 0
prints and writes files."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..data._classification import DataBundle
from .._io import (CHECKPOINT_FORMAT, CheckpointError, check_config_match, check_out_dir,
                  check_resume_fields, load_checkpoint, save_checkpoint, write_csv, write_json)
from ._runtime import TrainingError, get_rng_state, resolve_device, set_rng_state, set_seed
from ._distributed import _setup_distributed, _epoch_indices
from ._tasks import AbstractTask, _unwrap, as_task
from ._views import SOLVER_KEYS

_RESUME_KEYS = ("model", "data", "seed", "batch_size", "lr", "weight_decay", "limit_train",
                "limit_test", "lr_schedule")
#: Run settings a run config holds only when they differ from these defaults.
_RESUME_DEFAULTS = {"label_smoothing": 0.0, "ema_decay": None}

#: Learning-rate schedules of :func:`fit` (see :func:`scheduled_lr`).
LR_SCHEDULES = ("constant", "cosine", "onecycle")


def scheduled_lr(lr: float, schedule: str, progress: float) -> float:
    """The learning rate at ``progress`` in [0, 1) of training (batches done / all batches).

    ``"constant"``: ``lr``. ``"cosine"``: ``lr * (1 + cos(pi * progress)) / 2``.
    ``"onecycle"``: a linear warm-up from ``lr / 10`` to ``lr`` over the first 20 % of
    the batches, then the cosine decay to 0 over the rest (Smith & Topurkoff's one-cycle
    policy, without momentum cycling). A pure function of the position in training, so a
    resumed run follows the same schedule.
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        warm = 0.2
        if progress < warm:
            return lr * (0.1 + 0.9 * progress / warm)
        return lr * 0.5 * (1.0 + math.cos(math.pi * (progress - warm) / (1.0 - warm)))
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")

CHECKPOINT_NAME = "checkpoint.pt"


def _blocks(model: nn.Module) -> list:
    m = _unwrap(model)
    return list(m.ode_blocks()) if hasattr(m, "ode_blocks") else []


def _batch_stats(model: nn.Module) -> tuple[float, float, float]:
    """(forward f-evals, backward f-evals, backward vjps) of the last batch, over all blocks."""
    fwd = bwd = vjp = 0.0
    for block in _blocks(model):
        s = getattr(block, "last_stats", None)
        if s is None:
            continue
        fwd += float(getattr(s, "n_f_evals", 0) or 0)
        bwd += float(getattr(s, "n_f_evals_backward", 0) or 0)
        vjp += float(getattr(s, "n_vjp_evals", 0) or 0)
    return fwd, bwd, vjp


# ----------------------------------------------------------------------------- training

@dataclass
class TrainResult:
    """What :func:`fit`/:func:`train` return.

    Attributes
    ----------
    model : nn.Module
        The trained model (unwrapped from DDP, on the training device).
    metrics : list of dict
        One row per epoch (also in ``metrics.csv``/``metrics.json`` when ``out`` is set).
    train_time : float
        Seconds spent in training steps (evaluation excluded), over all epochs run
        so far, including those before a resume.
    out : pathlib.Path or None
        Output directory.
    resumed_from : int
        Number of epochs that were already done when this call started.
    """

    model: nn.Module
    metrics: list = field(default_factory=list)
    train_time: float = 0.0
    out: Path | None = None
    resumed_from: int = 0


def _progress(iterable, *, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _arch_config(cfg: Mapping) -> dict:
    return {k: v for k, v in cfg.items() if k not in SOLVER_KEYS}


def fit(model: nn.Module, data: DataBundle | AbstractTask, *, epochs: int, batch_size: int = 64,
        lr: float = 3e-3, weight_decay: float = 0.0, seed: int = 0, device: str = "auto",
        out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
        quiet: bool = False, label: str | None = None, run_config: Mapping | None = None,
        on_epoch: Callable[[dict], None] | None = None, lr_schedule: str = "constant",
        solver_sampler=None,
        regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
        ema_decay: float | None = None) -> TrainResult:
    """Train ``model`` on ``data`` with Adam: the one training loop of every task.

    Parameters
    ----------
    model : nn.Module
        The model the task trains (for a DataBundle: a classifier mapping a batch of
        inputs to logits); models with ``ode_blocks()`` also get their function
        evaluations recorded.
    data : DataBundle or AbstractTask
        A DataBundle from :func:`odenet.load_dataset` (trained by cross-entropy, metric
        accuracy: a :class:`~odenet.training.ClassificationTask`) or any task (the
        time-series tasks, your own; see :mod:`odenet.training._tasks`).
    epochs : int
        Total number of epochs (a resumed run continues up to this number).
    batch_size, lr, weight_decay, seed : optional
        Optimisation settings. ``seed`` drives the per-epoch shuffles.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    out : path, optional
        Directory for ``metrics.csv``, ``metrics.json`` and ``checkpoint.pt``
        (written atomically after every epoch, by rank 0 only). ``None`` writes nothing.
    resume : bool
        Continue from ``out/checkpoint.pt``. The checkpoint must come from the same
        model architecture and run settings; the solver may differ.
    overwrite : bool
        Allow starting afresh in a directory that already holds a checkpoint.
    quiet : bool
        No progress bar and no per-epoch lines. The progress bar is also off when
        stderr is not a terminal.
    label : str, optional
        Prefix of printed lines.
    run_config : mapping, optional
        Settings stored in the checkpoint and checked on resume (default: built
        from the arguments).
    on_epoch : callable, optional
        Called with each new metrics row.
    lr_schedule : {"constant", "cosine", "onecycle"}
        How the learning rate moves over the batches of all ``epochs`` (see
        :func:`scheduled_lr`); ``lr`` is the peak.
    solver_sampler : odenet.SolverSampler, optional
        Solver-robust training: before every training batch ``solver_sampler.draw(model,
        epoch, batch)`` sets the solver of that batch; the model's own solver is restored
        after every epoch (before evaluation) and at the end.
    regularizer : callable, optional
        ``regularizer(model)`` after the forward pass of every training batch returns a
        0-dim tensor added to the loss (kinetic-energy / Jacobian penalties; see
        :class:`odenet.DynamicsRegularizer`).
    ema_decay : float in (0, 1), optional
        Keep an exponential moving average of the weights (every floating-point parameter),
        ``avg <- ema_decay * avg + (1 - ema_decay) * w`` after every optimiser step, starting
        from the weights before the first step; every evaluation (the ``test_*`` metrics of
        each epoch) uses the averaged weights, training continues from the live ones, and
        the returned model holds the average. Its horizon is about ``1 / (1 - ema_decay)``
        optimiser steps. The checkpoint holds both, so a resumed run is exact.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError, TypeError
        Bad arguments (checked before any training): ``resume`` together with
        ``overwrite``; an ``out`` that is empty, a file, under a file or not writable;
        an ``out`` directory holding an earlier run (without ``resume``/``overwrite``).
    CheckpointError
        ``resume`` with a missing, corrupt or mismatched checkpoint.
    TrainingError
        The loss became non-finite.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    task = as_task(data)
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
    if ema_decay is not None and (isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float))
                                  or not 0 < ema_decay < 1):
        raise ValueError(f"ema_decay must be a number in (0, 1) (e.g. 0.95) or None for no weight "
                         f"average, got {ema_decay!r}")
    task.check_model(model)
    run_cfg = dict(run_config) if run_config is not None else dict(
        task.run_config(), seed=seed, batch_size=batch_size, lr=float(lr),
        weight_decay=float(weight_decay), lr_schedule=lr_schedule)
    if run_config is None and ema_decay is not None:  # stored only when set: older checkpoints still resume
        run_cfg["ema_decay"] = float(ema_decay)
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other (--resume continues "
                         "the run in OUT, --overwrite discards it); pass one of them")
    out_dir = check_out_dir(out)  # before any training: a bad --out fails now, not after an epoch
    ckpt_path = out_dir / CHECKPOINT_NAME if out_dir is not None else None
    if resume and ckpt_path is None:
        raise ValueError("resume=True needs an out directory holding checkpoint.pt")
    if (ckpt_path is not None and not resume and not overwrite and ckpt_path.exists()):
        raise ValueError(f"{out_dir} already holds {CHECKPOINT_NAME} from an earlier run; "
                         "pass --resume to continue it, --overwrite to start afresh, "
                         "or choose another --out")

    ctx = _setup_distributed(str(device))
    completed = False
    try:
        dev = resolve_device(device, local_rank=ctx.local_rank)
        module = model.to(dev)
        optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
        metrics: list[dict] = []
        start_epoch = 0
        ema = _WeightAverage(module, float(ema_decay)) if ema_decay is not None else None
        if resume:
            start_epoch, metrics = _restore(ckpt_path, module, optimizer, run_cfg, dev, ema)
        else:
            set_seed(seed)
        train_model: nn.Module = module
        if ctx.active:
            train_model = nn.parallel.DistributedDataParallel(
                module, device_ids=[dev.index] if dev.type == "cuda" else None)
        speak = ctx.is_main and not quiet
        bar = speak and sys.stderr.isatty()
        name = f"[{label}] " if label else ""
        if speak and start_epoch:
            print(f"{name}resuming from {ckpt_path} after epoch {start_epoch}", flush=True)
        if speak and start_epoch >= epochs:
            print(f"{name}checkpoint already has {start_epoch} epoch(s) >= epochs={epochs}; "
                  "nothing to do", flush=True)

        for epoch in range(start_epoch, epochs):
            row = _train_epoch(train_model, module, optimizer, task, epoch=epoch,
                               epochs=epochs, batch_size=batch_size, seed=seed, ctx=ctx,
                               device=dev, progress=bar, desc=f"{name}epoch {epoch + 1}/{epochs}",
                               lr_at=lambda p: scheduled_lr(float(lr), lr_schedule, p),
                               solver_sampler=solver_sampler, regularizer=regularizer, ema=ema)
            with (ema.applied() if ema is not None else contextlib.nullcontext()):
                ev = task.evaluate(module, batch_size=max(batch_size, 256), ctx=ctx)
            row.update({"test_loss": ev["loss"], f"test_{task.metric}": ev[task.metric],
                        "lr": float(optimizer.param_groups[0]["lr"])})
            metrics.append(row)
            if ctx.is_main and out_dir is not None:
                _write_outputs(out_dir, module, optimizer, metrics, run_cfg, task, epoch + 1, ema)
            ctx.check_replicas(module, epoch + 1)
            ctx.barrier()
            if speak:
                print(f"{name}epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  "
                      f"{_metric_text(task.metric, row)}  "
                      f"nfe fwd {row['nfe_forward']:.1f} bwd {row['nfe_backward']:.1f}"
                      f"+{row['vjp_backward']:.1f} vjp  {row['epoch_time']:.1f}s", flush=True)
            if on_epoch is not None:
                on_epoch(row)
        completed = True
        if ema is not None:
            ema.copy_to(module)
        return TrainResult(model=module, metrics=metrics,
                           train_time=float(sum(r["epoch_time"] for r in metrics)),
                           out=out_dir, resumed_from=start_epoch)
    finally:
        if ctx.owns_group:
            # tear down in order: every rank past its last collective, the DDP wrapper (its
            # reducer holds communication hooks on the group) gone, then the group itself; a
            # wrapper outliving its group aborted a rank at interpreter exit ("terminate
            # called without an active exception")
            train_model = None  # noqa: F841
            gc.collect()
            try:
                if completed:  # on the error path a peer may never reach the barrier
                    torch.distributed.barrier()
            finally:
                torch.distributed.destroy_process_group()


class _WeightAverage:
    """The exponential moving average of a module's floating-point parameters (``ema_decay``)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in module.parameters() if p.is_floating_point()]
        self.avg = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for a, p in zip(self.avg, self.params):
            a.lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for p, a in zip(self.params, self.avg):
            p.copy_(a)

    @contextlib.contextmanager
    def applied(self):
        """The averaged weights in the module for the duration; the live ones restored after."""
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.avg):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, live):
                    p.copy_(w)

    def state(self) -> list:
        return [a.detach().cpu() for a in self.avg]

    @torch.no_grad()
    def load(self, state, source) -> None:
        if not isinstance(state, (list, tuple)) or len(state) != len(self.avg) or any(
                tuple(s.shape) != tuple(a.shape) for s, a in zip(state, self.avg)):
            raise CheckpointError(f"checkpoint {source}: its weight average does not fit the model")
        for a, s in zip(self.avg, state):
            a.copy_(s)


def _metric_text(metric: str, row: Mapping) -> str:
    tr, te = row[f"train_{metric}"], row[f"test_{metric}"]
    if metric == "acc":
        return f"train {100 * tr:.1f}%  test {100 * te:.1f}%"
    return f"train {metric} {tr:.4g}  test {metric} {te:.4g}"


def _train_epoch(train_model, module, optimizer, task: AbstractTask, *, epoch, epochs, batch_size, seed,
                 ctx, device, progress, desc, lr_at=None, solver_sampler=None, regularizer=None,
                 ema=None) -> dict:
    module.train()
    idx = _epoch_indices(task.train_size(), epoch, seed, ctx)
    n_batches = (len(idx) + batch_size - 1) // batch_size
    sums = [0.0] * 6  # loss*n, metric sum, n, fwd evals, bwd evals, bwd vjps
    t0 = time.perf_counter()
    batches = _progress(task.train_batches(idx, batch_size, device), total=n_batches, desc=desc,
                        enabled=progress)
    try:
        _run_batches(batches, train_model, module, optimizer, task, sums, epoch, n_batches, epochs,
                     lr_at, solver_sampler, regularizer, ema)
    finally:
        if solver_sampler is not None:
            solver_sampler.restore(module)
    elapsed = time.perf_counter() - t0
    total_batches = float(n_batches)
    loss_sum, metric_sum, n, fwd, bwd, vjp, nb = ctx.all_sum(sums + [total_batches], device)
    nb = max(nb, 1.0)
    return {"epoch": epoch + 1, "train_loss": loss_sum / max(n, 1.0), f"train_{task.metric}": metric_sum / max(n, 1.0),
            "nfe_forward": fwd / nb, "nfe_backward": bwd / nb, "vjp_backward": vjp / nb,
            "epoch_time": elapsed}


def _run_batches(batches, train_model, module, optimizer, task, sums, epoch, n_batches, epochs,
                 lr_at, solver_sampler, regularizer, ema=None) -> None:
    for b, batch in enumerate(batches):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at((epoch * n_batches + b) / (epochs * n_batches))
        if solver_sampler is not None:
            solver_sampler.draw(module, epoch, b)
        optimizer.zero_grad(set_to_none=True)
        loss, n, metric_sum = task.loss(train_model, batch)
        if regularizer is not None:
            loss = loss + regularizer(module)
        if not torch.isfinite(loss):
            raise TrainingError(f"the training loss became {float(loss.detach())} at epoch {epoch + 1}, "
                                f"batch {b + 1}; lower the learning rate or tighten the solver")
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update()
        fwd, bwd, vjp = _batch_stats(module)
        sums[0] += float(loss.detach()) * n
        sums[1] += float(metric_sum)
        sums[2] += n
        sums[3] += fwd
        sums[4] += bwd
        sums[5] += vjp


def _model_identity(module: nn.Module) -> tuple[str, dict]:
    cfg = getattr(module, "config", None)
    return type(module).__name__, (dict(cfg) if isinstance(cfg, Mapping) else {})


def _write_outputs(out_dir: Path, module, optimizer, metrics, run_cfg, task: AbstractTask,
                   epoch: int, ema=None) -> None:
    kind, cfg = _model_identity(module)
    write_csv(out_dir / "metrics.csv", metrics)
    write_json(out_dir / "metrics.json", {"run": run_cfg, "model_kind": kind, "model_config": cfg,
                                         "metrics": metrics})
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model_kind": kind,
        "model_config": cfg,
        "run_config": run_cfg,
        "model_state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimizer_state": optimizer.state_dict(),
        "rng": get_rng_state(),
        "metrics": metrics,
        "data": task.checkpoint_data(),
        "torch_version": str(torch.__version__),
    }
    if ema is not None:
        payload["ema_state"] = ema.state()
    save_checkpoint(out_dir / CHECKPOINT_NAME, payload)


def _restore(path: Path, module: nn.Module, optimizer, run_cfg: Mapping,
             device: torch.device, ema=None) -> tuple[int, list]:
    ckpt = load_checkpoint(path, map_location=device)
    missing = [k for k in ("rng", "metrics") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}, which resuming needs; "
                              "it was not written by odenet.train")
    check_resume_fields(ckpt, path)
    kind, cfg = _model_identity(module)
    if ckpt["model_kind"] != kind:
        raise CheckpointError(f"checkpoint {path} holds a {ckpt['model_kind']}, the model is a {kind}")
    check_config_match(_arch_config(ckpt["model_config"]), _arch_config(cfg), what="model",
                       source=f"checkpoint {path}")
    saved_run = ckpt.get("run_config") or {}
    keys = [k for k in _RESUME_KEYS if k in saved_run and k in run_cfg]
    saved = {k: saved_run.get(k) for k in keys}
    now = {k: run_cfg.get(k) for k in keys}
    for k, default in _RESUME_DEFAULTS.items():  # settings stored only when not at their default
        saved[k], now[k] = saved_run.get(k, default), run_cfg.get(k, default)
    check_config_match(saved, now, what="this run", source=f"checkpoint {path}")
    try:
        module.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {exc}") from exc
    if "optimizer_state" in ckpt:
        try:
            optimizer.load_state_dict(ckpt["optimizer_state"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path}: optimiser state does not fit: {exc}") from exc
    if ema is not None:
        if "ema_state" not in ckpt:
            raise CheckpointError(f"checkpoint {path} holds no weight average; it was written without "
                                  "ema_decay")
        ema.load(ckpt["ema_state"], path)
    set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), list(ckpt["metrics"])
