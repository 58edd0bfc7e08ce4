"""Training loop: seeds, evaluation, metrics files, atomic checkpoints, resume and DDP.

One vector field, three *views* of it (:data:`VIEWS`): an explicit ResNet (Euler
with fixed steps), an implicit ResNet (backward Euler solved by a root finder) and
a continuous Neural ODE (adaptive dopri5 trained with the adjoint). :func:`train`
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
prints and writes files.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._data import DataBundle, iterate_batches, load_dataset
from ._io import (CHECKPOINT_FORMAT, CheckpointError, check_config_match, load_checkpoint,
                  save_checkpoint, write_csv, write_json)

__all__ = [
    "VIEWS", "FIELDS", "field_arch", "SOLVER_KEYS", "TrainConfig", "TrainResult", "TrainingError",
    "set_seed", "get_rng_state", "set_rng_state", "resolve_device", "solver_config_for",
    "build_view_model", "check_model_matches_data", "evaluate", "fit", "train", "load_model",
]

#: Solver settings of the three views of one vector field. Every key is given so
#: that switching views never inherits a setting from the previous one.
VIEWS: dict[str, dict[str, Any]] = {
    "resnet": dict(method="euler", steps=4, rtol=1e-3, atol=1e-4, gradient="direct",
                   options=None),
    "implicit": dict(method="implicit_euler", steps=4, rtol=1e-3, atol=1e-4, gradient="direct",
                     options={"root_finder": "newton_krylov", "root_rtol": 1e-3, "root_atol": 1e-4}),
    "node": dict(method="dopri5", steps=None, rtol=1e-3, atol=1e-4, gradient="adjoint",
                 options=None),
}

#: Model-config keys that describe the solver, not the weights: they may differ
#: between a checkpoint and the model it is loaded into.
SOLVER_KEYS = ("method", "steps", "rtol", "atol", "gradient", "options", "solver", "solver_cfg",
               "solver_config")

#: Run settings that must agree when a run is resumed.
_RESUME_KEYS = ("model", "data", "seed", "batch_size", "lr", "weight_decay", "limit_train",
                "limit_test")

CHECKPOINT_NAME = "checkpoint.pt"


class TrainingError(RuntimeError):
    """Training failed numerically (e.g. the loss became NaN or infinite)."""


# ----------------------------------------------------------------------------- seeds, devices

def set_seed(seed: int) -> None:
    """Seed Python's :mod:`random`, NumPy's global generator and torch (CPU and CUDA)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """All global RNG states, as tensors and plain containers (checkpoint-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states returned by :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(v) for v in py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((str(npst[0]), np.asarray(npst[1].numpy(), dtype=np.uint32),
                         int(npst[2]), int(npst[3]), float(npst[4])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def resolve_device(device: str | torch.device = "auto", *, local_rank: int = 0) -> torch.device:
    """Turn ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` into a :class:`torch.device`.

    ``"auto"`` picks CUDA when available. Under DDP a bare ``"cuda"`` means
    ``cuda:<local_rank>``.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu', 'cuda' or 'auto', got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; "
                             "use --device cpu or --device auto")
        if device == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(device)
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    return torch.device("cpu")


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
    return cfg


def _model_api():
    from . import _models  # imported lazily: odenet._models is the model layer's module
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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


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


# ----------------------------------------------------------------------------- distributed

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def check_replicas(self, module: nn.Module, epoch: int) -> None:
        """Raise :class:`TrainingError` unless every rank holds bit-identical parameters."""
        if not self.active:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])
            hi, lo = flat.clone(), flat.clone()
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            diverged = not torch.equal(hi, lo)
        if diverged:
            raise TrainingError(f"the DistributedDataParallel replicas hold different weights after epoch "
                                f"{epoch}; the ranks must run the same model, data and seed")


def _setup_distributed(device: str) -> _Dist:
    """Join (or start, under torchrun) the default process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", dist.get_rank())), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device, local_rank=local_rank).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, True)


def _epoch_indices(n: int, epoch: int, seed: int, ctx: _Dist) -> torch.Tensor:
    """This rank's shuffled sample indices for ``epoch`` (DistributedSampler semantics)."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
             _ctx: _Dist | None = None) -> dict:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``.

    The model is put in eval mode and restored afterwards. Returns a dict with
    ``loss``, ``accuracy`` (in [0, 1]) and ``n``.
    """
    ctx = _ctx or _Dist()
    module = _unwrap(model)
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    idx = torch.arange(ctx.rank, len(y), ctx.world)
    loss_sum = correct = 0.0
    try:
        for xb, yb in iterate_batches(x, y, batch_size, indices=idx):
            xb, yb = xb.to(device), yb.to(device)
            logits = module(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += float((logits.argmax(1) == yb).sum())
    finally:
        module.train(was_training)
    loss_sum, correct, n = ctx.all_sum([loss_sum, correct, float(len(idx))], device)
    return {"loss": loss_sum / max(n, 1.0), "accuracy": correct / max(n, 1.0), "n": int(n)}


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


def fit(model: nn.Module, data: DataBundle, *, epochs: int, batch_size: int = 64,
        lr: float = 3e-3, weight_decay: float = 0.0, seed: int = 0, device: str = "auto",
        out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
        quiet: bool = False, label: str | None = None, run_config: Mapping | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``model`` on ``data`` with Adam and cross-entropy.

    Parameters
    ----------
    model : nn.Module
        A classifier mapping a batch of inputs to logits; models with
        ``ode_blocks()`` also get their function evaluations recorded.
    data : DataBundle
        From :func:`odenet.load_dataset`.
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

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError, TypeError
        Bad arguments, an ``out`` directory holding an earlier run (without
        ``resume``/``overwrite``).
    CheckpointError
        ``resume`` with a missing, corrupt or mismatched checkpoint.
    TrainingError
        The loss became non-finite.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise TypeError(f"data must be a DataBundle from odenet.load_dataset, got {type(data).__name__}")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    check_model_matches_data(model, data)
    run_cfg = dict(run_config) if run_config is not None else dict(
        data=data.name, seed=seed, batch_size=batch_size, lr=float(lr),
        weight_decay=float(weight_decay), limit_train=data.info.get("limit_train"),
        limit_test=data.info.get("limit_test"))
    out_dir = Path(out) if out is not None else None
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
        if resume:
            start_epoch, metrics = _restore(ckpt_path, module, optimizer, run_cfg, dev)
        else:
            set_seed(seed)
        train_model: nn.Module = module
        if ctx.active:
            train_model = nn.parallel.DistributedDataParallel(
                module, device_ids=[dev.index] if dev.type == "cuda" else None)
        x_train, y_train = data.x_train.to(dev), data.y_train.to(dev)
        speak = ctx.is_main and not quiet
        bar = speak and sys.stderr.isatty()
        name = f"[{label}] " if label else ""
        if speak and start_epoch:
            print(f"{name}resuming from {ckpt_path} after epoch {start_epoch}", flush=True)
        if speak and start_epoch >= epochs:
            print(f"{name}checkpoint already has {start_epoch} epoch(s) >= epochs={epochs}; "
                  "nothing to do", flush=True)

        for epoch in range(start_epoch, epochs):
            row = _train_epoch(train_model, module, optimizer, x_train, y_train, epoch=epoch,
                               epochs=epochs, batch_size=batch_size, seed=seed, ctx=ctx,
                               device=dev, progress=bar, desc=f"{name}epoch {epoch + 1}/{epochs}")
            ev = evaluate(module, data.x_test, data.y_test, batch_size=max(batch_size, 256),
                          _ctx=ctx)
            row.update(test_loss=ev["loss"], test_acc=ev["accuracy"],
                       lr=float(optimizer.param_groups[0]["lr"]))
            metrics.append(row)
            if ctx.is_main and out_dir is not None:
                _write_outputs(out_dir, module, optimizer, metrics, run_cfg, data, epoch + 1)
            ctx.check_replicas(module, epoch + 1)
            ctx.barrier()
            if speak:
                print(f"{name}epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  "
                      f"train {100 * row['train_acc']:.1f}%  test {100 * row['test_acc']:.1f}%  "
                      f"nfe fwd {row['nfe_forward']:.1f} bwd {row['nfe_backward']:.1f}"
                      f"+{row['vjp_backward']:.1f} vjp  {row['epoch_time']:.1f}s", flush=True)
            if on_epoch is not None:
                on_epoch(row)
        completed = True
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


def _train_epoch(train_model, module, optimizer, x, y, *, epoch, epochs, batch_size, seed, ctx,
                 device, progress, desc) -> dict:
    module.train()
    idx = _epoch_indices(len(y), epoch, seed, ctx).to(device)
    n_batches = (len(idx) + batch_size - 1) // batch_size
    sums = [0.0] * 6  # loss*n, correct, n, fwd evals, bwd evals, bwd vjps
    t0 = time.perf_counter()
    batches = _progress(iterate_batches(x, y, batch_size, indices=idx), total=n_batches,
                        desc=desc, enabled=progress)
    for b, (xb, yb) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        logits = train_model(xb)
        loss = F.cross_entropy(logits, yb)
        if not torch.isfinite(loss):
            raise TrainingError(f"the training loss became {float(loss.detach())} at epoch {epoch + 1}, "
                                f"batch {b + 1}; lower the learning rate or tighten the solver")
        loss.backward()
        optimizer.step()
        fwd, bwd, vjp = _batch_stats(module)
        sums[0] += float(loss.detach()) * len(yb)
        sums[1] += float((logits.detach().argmax(1) == yb).sum())
        sums[2] += len(yb)
        sums[3] += fwd
        sums[4] += bwd
        sums[5] += vjp
    elapsed = time.perf_counter() - t0
    total_batches = float(n_batches)
    loss_sum, correct, n, fwd, bwd, vjp, nb = ctx.all_sum(sums + [total_batches], device)
    nb = max(nb, 1.0)
    return dict(epoch=epoch + 1, train_loss=loss_sum / max(n, 1.0), train_acc=correct / max(n, 1.0),
                nfe_forward=fwd / nb, nfe_backward=bwd / nb, vjp_backward=vjp / nb,
                epoch_time=elapsed)


def _model_identity(module: nn.Module) -> tuple[str, dict]:
    cfg = getattr(module, "config", None)
    return type(module).__name__, (dict(cfg) if isinstance(cfg, Mapping) else {})


def _write_outputs(out_dir: Path, module, optimizer, metrics, run_cfg, data: DataBundle,
                   epoch: int) -> None:
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
        "data": {"name": data.name, "mean": data.mean, "std": data.std,
                 "raw_range": list(data.raw_range) if data.raw_range else None},
        "torch_version": str(torch.__version__),
    }
    save_checkpoint(out_dir / CHECKPOINT_NAME, payload)


def _restore(path: Path, module: nn.Module, optimizer, run_cfg: Mapping,
             device: torch.device) -> tuple[int, list]:
    ckpt = load_checkpoint(path, map_location=device)
    kind, cfg = _model_identity(module)
    if ckpt["model_kind"] != kind:
        raise CheckpointError(f"checkpoint {path} holds a {ckpt['model_kind']}, the model is a {kind}")
    check_config_match(_arch_config(ckpt["model_config"]), _arch_config(cfg), what="model",
                       source=f"checkpoint {path}")
    saved_run = ckpt.get("run_config") or {}
    keys = [k for k in _RESUME_KEYS if k in saved_run and k in run_cfg]
    check_config_match({k: saved_run.get(k) for k in keys}, {k: run_cfg.get(k) for k in keys},
                       what="this run", source=f"checkpoint {path}")
    try:
        module.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {exc}") from exc
    if "optimizer_state" in ckpt:
        try:
            optimizer.load_state_dict(ckpt["optimizer_state"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path}: optimiser state does not fit: {exc}") from exc
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), list(ckpt.get("metrics", []))


# ----------------------------------------------------------------------------- train(config)

#: Field families every view can share: ``parabolic`` (one-sided Lipschitz bound
#: ``expansion``, so backward Euler with ``h * expansion < 1`` is well posed) or
#: ``unconstrained`` (:class:`odenet.ConvField` / :class:`odenet.MLPField`).
FIELDS = ("parabolic", "unconstrained")


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


@dataclass
class TrainConfig:
    """Settings of :func:`train` (and of ``odenet train``).

    ``model`` is the view: ``"resnet"`` (Euler, fixed steps), ``"implicit"``
    (backward Euler with a root finder) or ``"node"`` (dopri5, adjoint). The
    ``method``/``steps``/``rtol``/``atol``/``gradient``/``root_finder`` fields
    override that view's solver settings when not ``None``. ``field`` (``"parabolic"``,
    the default, or ``"unconstrained"``) and ``expansion`` choose the vector field.
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
    set_seed(config.seed)
    arch = {"augment": config.augment} if config.augment else {}
    arch["spectral_norm"] = bool(config.spectral_norm)
    arch.update(field_arch(config.field, config.expansion))
    model = build_view_model(config.model, data, width=config.width,
                             solver=config.solver_overrides(), **arch)
    run_cfg = dict(model=config.model, data=config.data, seed=config.seed,
                   batch_size=config.batch_size, lr=float(config.lr),
                   weight_decay=float(config.weight_decay), limit_train=config.limit_train,
                   limit_test=config.limit_test)
    return fit(model, data, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
               weight_decay=config.weight_decay, seed=config.seed, device=config.device,
               out=config.out, resume=config.resume, overwrite=config.overwrite,
               quiet=config.quiet, run_config=run_cfg, label=None)


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
    if solver:
        model.configure_solver(**solver)
    return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model
