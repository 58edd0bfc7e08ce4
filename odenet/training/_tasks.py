"""Tasks: what the one training loop needs to know about a learning problem.

:func:`odenet.fit` runs the same loop (seeded shuffles, DDP shards, progress, metrics
files, atomic checkpoints, resume) for every problem; a task supplies the parts that
differ: how to cut a training batch, the loss, the metric and the test evaluation.
Image/point classification is :class:`ClassificationTask`; the time-series models bring
their own tasks (sequence classification, ELBO training, interpolation).

Rules for implementers of :class:`AbstractTask`:

1. ``train_size()`` is the number of training examples; the loop shuffles
   ``range(train_size())`` with a generator seeded by ``seed + epoch`` and shards it across
   DDP ranks.
2. ``train_batches(indices, batch_size, device)`` yields batches (any object) of the
   examples at ``indices``, in that order, already on ``device``.
3. ``loss(model, batch)`` returns ``(loss, n, metric_sum)``: the mean loss over the batch
   (a 0-dim tensor that requires grad), the batch's example count and the *sum* of the
   per-example metric (e.g. correct predictions); the loop reports ``metric_sum / n``.
4. ``evaluate(model, batch_size=..., ctx=...)`` returns ``{"loss", metric, "n"}`` on the
   test split, summed over DDP ranks with ``ctx.all_sum`` (see :class:`ClassificationTask`).
5. ``metric`` names the metric in metrics rows (``train_<metric>``, ``test_<metric>``);
   ``run_config()`` describes the data (stored in checkpoints and checked on resume);
   ``checkpoint_data()`` is what a checkpoint needs to rebuild the inputs' preprocessing.
6. ``check_model(model)`` raises ``ValueError`` when the model cannot take the data.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..data._classification import DataBundle, iterate_batches
from ._distributed import _Dist
from ._views import check_model_matches_data

__all__ = ["AbstractTask", "ClassificationTask", "as_task", "evaluate"]


class AbstractTask(abc.ABC):
    """A learning problem for :func:`odenet.fit` (see the module docstring for the rules)."""

    #: Name of the metric in metrics rows (``train_<metric>``, ``test_<metric>``).
    metric: str = "acc"

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The data set's name (stored in metrics files and checkpoints)."""

    @abc.abstractmethod
    def train_size(self) -> int:
        """Number of training examples."""

    @abc.abstractmethod
    def train_batches(self, indices: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[Any]:
        """Batches of the training examples at ``indices`` (in order), on ``device``."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int, float]:
        """``(mean loss, number of examples, sum of the metric)`` of one batch."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, *, batch_size: int, ctx: _Dist) -> dict:
        """``{"loss": ..., <metric>: ..., "n": ...}`` on the test split."""

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` if ``model`` cannot take this task's data."""

    def run_config(self) -> dict:
        """Data settings stored in checkpoints and checked on resume."""
        return {"data": self.name}

    def checkpoint_data(self) -> dict:
        """What a checkpoint stores about the data (name, preprocessing)."""
        return {"name": self.name}


class ClassificationTask(AbstractTask):
    """Cross-entropy classification of a :class:`odenet.DataBundle` (digits, circles, spirals).

    The metric is accuracy (``train_acc``, ``test_acc``). ``label_smoothing`` (in ``[0, 1)``,
    default 0) trains on targets mixed with the uniform distribution over the classes
    (``torch.nn.functional.cross_entropy``'s ``label_smoothing``); the reported test loss is
    the plain cross-entropy either way.
    """

    metric = "acc"

    def __init__(self, data: DataBundle, *, label_smoothing: float = 0.0):
        if not isinstance(data, DataBundle):
            raise TypeError(f"data must be a DataBundle from odenet.load_dataset, got {type(data).__name__}")
        self.data = data
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self._on: dict = {}

    @property
    def name(self) -> str:
        return self.data.name

    def train_size(self) -> int:
        return len(self.data.y_train)

    def _train_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._on:  # one copy per device for the whole run
            self._on = {key: (self.data.x_train.to(device), self.data.y_train.to(device))}
        return self._on[key]

    def train_batches(self, indices, batch_size, device):
        x, y = self._train_on(device)
        return iterate_batches(x, y, batch_size, indices=indices.to(device))

    def loss(self, model, batch):
        xb, yb = batch
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=self.label_smoothing)
        return loss, len(yb), float((logits.detach().argmax(1) == yb).sum())

    def evaluate(self, model, *, batch_size, ctx):
        ev = evaluate(model, self.data.x_test, self.data.y_test, batch_size=batch_size, _ctx=ctx)
        return {"loss": ev["loss"], "acc": ev["accuracy"], "n": ev["n"]}

    def check_model(self, model):
        check_model_matches_data(model, self.data)

    def run_config(self) -> dict:
        cfg = {"data": self.data.name, "limit_train": self.data.info.get("limit_train"),
               "limit_test": self.data.info.get("limit_test")}
        if self.label_smoothing:  # (absent when 0: checkpoints from before the option still resume)
            cfg["label_smoothing"] = self.label_smoothing
        return cfg


def check_label_smoothing(value: Any) -> float:
    """``value`` as a float in ``[0, 1)``, else a ValueError naming ``label_smoothing``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"label_smoothing must be a number in [0, 1) (0: off), got {value!r}")
    return float(value)

    def checkpoint_data(self) -> dict:
        d = self.data
        return {"name": d.name, "mean": d.mean, "std": d.std,
                "raw_range": list(d.raw_range) if d.raw_range else None}


def as_task(data: Any) -> AbstractTask:
    """``data`` itself if it is a task, a :class:`ClassificationTask` for a DataBundle."""
    if isinstance(data, AbstractTask):
        return data
    if isinstance(data, DataBundle):
        return ClassificationTask(data)
    raise TypeError("data must be a DataBundle from odenet.load_dataset or an odenet.training.AbstractTask, "
                    f"got {type(data).__name__}")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The unwrapped module in eval mode and its device; the training flag is restored on exit."""
    module = _unwrap(model)
    was_training = module.training
    module.eval()
    try:
        yield module, next(module.parameters()).device
    finally:
        module.train(was_training)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
             _ctx: _Dist | None = None) -> dict:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``.

    The model is put in eval mode and restored afterwards. Returns a dict with
    ``loss``, ``accuracy`` (in [0, 1]) and ``n``.
    """
    ctx = _ctx or _Dist()
    idx = torch.arange(ctx.rank, len(y), ctx.world)
    loss_sum = correct = 0.0
    with eval_mode(model) as (module, device):
        for xb, yb in iterate_batches(x, y, batch_size, indices=idx):
            xb, yb = xb.to(device), yb.to(device)
            logits = module(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += float((logits.argmax(1) == yb).sum())
    loss_sum, correct, n = ctx.all_sum([loss_sum, correct, float(len(idx))], device)
    return {"loss": loss_sum / max(n, 1.0), "accuracy": correct / max(n, 1.0), "n": int(n)}
