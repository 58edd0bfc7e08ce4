"""Time-series tasks for the one training loop :func:`odenet.fit`.

- :class:`SequenceClassificationTask`: cross-entropy on ``model(batch)`` logits, metric
  accuracy (``acc``), for UEA/UCR sets and spirals;
- :class:`SeriesRegressionTask`: interpolation or extrapolation, the loss is
  ``model(batch, target)`` (masked MSE, or the negative ELBO of a Latent ODE), metric the
  mean squared error (``mse``) of ``model.predict`` at the target times.

Both follow the rules of :class:`odenet.training.AbstractTask`; batches are
``(SeriesBatch, labels)`` or ``(SeriesBatch, target SeriesBatch)`` already on the device.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..data._irregular import SeriesData
from ._distributed import _Dist
from ._tasks import AbstractTask, _unwrap, eval_mode

__all__ = ["SequenceClassificationTask", "SeriesRegressionTask", "series_task"]


class _SeriesTask(AbstractTask):
    def __init__(self, data: SeriesData):
        if not isinstance(data, SeriesData):
            raise TypeError(f"data must be an odenet.data.SeriesData, got {type(data).__name__}")
        self.data = data

    @property
    def name(self) -> str:
        return self.data.name

    def train_size(self) -> int:
        return len(self.data.train)

    def check_model(self, model: nn.Module) -> None:
        m = _unwrap(model)
        c = getattr(m, "in_channels", None)
        if c is not None and c != self.data.channels:
            raise ValueError(f"the model takes {c} channel(s) but {self.data.name} has {self.data.channels}; "
                             f"build it with in_channels={self.data.channels}")

    def run_config(self) -> dict:
        return {"data": self.data.name, "task": self.data.task, "drop": self.data.info.get("drop", 0.0)}

    def checkpoint_data(self) -> dict:
        return {"name": self.data.name, "task": self.data.task, "info": dict(self.data.info)}

    def _chunks(self, n: int, batch_size: int, ctx: _Dist) -> Iterator[torch.Tensor]:
        idx = torch.arange(ctx.rank, n, ctx.world)
        for i in range(0, len(idx), batch_size):
            yield idx[i:i + batch_size]


class SequenceClassificationTask(_SeriesTask):
    """Classify whole series (``data.task == "classification"``); metric accuracy."""

    metric = "acc"

    def __init__(self, data: SeriesData):
        super().__init__(data)
        if data.task != "classification" or data.y_train is None:
            raise ValueError(f"{data.name} is a {data.task} set; SequenceClassificationTask needs labels")

    def check_model(self, model):
        super().check_model(model)
        k = getattr(_unwrap(model), "num_classes", None)
        if k is not None and k != self.data.num_classes:
            raise ValueError(f"the model has {k} classes but {self.data.name} has {self.data.num_classes}")

    def train_batches(self, indices, batch_size, device):
        d = self.data
        for i in range(0, len(indices), batch_size):
            idx = indices[i:i + batch_size]
            yield d.train.index(idx).to(device), d.y_train[idx].to(device)

    def loss(self, model, batch):
        xb, yb = batch
        logits = model(xb)
        return F.cross_entropy(logits, yb), len(yb), float((logits.detach().argmax(1) == yb).sum())

    @torch.no_grad()
    def evaluate(self, model, *, batch_size, ctx):
        loss = correct = n = 0.0
        with eval_mode(model) as (m, device):
            for idx in self._chunks(len(self.data.test), batch_size, ctx):
                logits = m(self.data.test.index(idx).to(device))
                y = self.data.y_test[idx].to(device)
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += float((logits.argmax(1) == y).sum())
                n += len(idx)
        loss, correct, n = ctx.all_sum([loss, correct, n], device)
        return {"loss": loss / max(n, 1.0), "acc": correct / max(n, 1.0), "n": int(n)}


class SeriesRegressionTask(_SeriesTask):
    """Interpolation or extrapolation: predict the target series; metric mean squared error."""

    metric = "mse"

    def __init__(self, data: SeriesData):
        super().__init__(data)
        if data.task not in ("interpolation", "extrapolation") or data.target_train is None:
            raise ValueError(f"{data.name} is a {data.task} set; SeriesRegressionTask needs targets")

    def train_batches(self, indices, batch_size, device):
        d = self.data
        for i in range(0, len(indices), batch_size):
            idx = indices[i:i + batch_size]
            yield d.train.index(idx).to(device), d.target_train.index(idx).to(device)

    def loss(self, model, batch):
        xb, target = batch
        loss, pred = model(xb, target)
        m = target.mask
        mse = float((((pred.detach() - target.values) ** 2) * m).sum() / m.sum().clamp_min(1))
        return loss, len(xb), mse * len(xb)

    @torch.no_grad()
    def evaluate(self, model, *, batch_size, ctx):
        sq = count = n = 0.0
        with eval_mode(model) as (m, device):
            for idx in self._chunks(len(self.data.test), batch_size, ctx):
                target = self.data.target_test.index(idx).to(device)
                pred = m.predict(self.data.test.index(idx).to(device), target.times, target.lengths)
                sq += float((((pred - target.values) ** 2) * target.mask).sum())
                count += float(target.mask.sum())
                n += len(idx)
        sq, count, n = ctx.all_sum([sq, count, n], device)
        mse = sq / max(count, 1.0)
        return {"loss": mse, "mse": mse, "n": int(n)}


def series_task(data: SeriesData) -> AbstractTask:
    """The task of a :class:`~odenet.data.SeriesData`: classification or regression."""
    return SequenceClassificationTask(data) if data.task == "classification" else SeriesRegressionTask(data)
