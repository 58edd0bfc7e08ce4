"""PNGs of the ``timeseries`` job: predictions with observed points marked, accuracy against
drop rate, training curves (matplotlib, Agg backend; no windows)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from ._plots import _pyplot, _save

__all__ = ["plot_series_predictions", "plot_accuracy_vs_drop", "plot_series_curves"]


def plot_series_predictions(obs, target, preds: Mapping[str, "object"], path: str | os.PathLike, *,
                            title: str, n: int = 4) -> Path:
    """``n`` test series: observed points (dots), targets (crosses), each model's prediction (lines)."""
    plt = _pyplot()
    n = min(n, len(obs))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3), squeeze=False)
    try:
        for i, ax in enumerate(axes[0]):
            lo, lt = int(obs.lengths[i]), int(target.lengths[i])
            ax.plot(obs.times[i, :lo].cpu(), obs.values[i, :lo, 0].cpu(), "ko", ms=3, label="observed")
            ax.plot(target.times[i, :lt].cpu(), target.values[i, :lt, 0].cpu(), "x", color="grey", ms=3,
                    label="target")
            for name, p in preds.items():
                ax.plot(target.times[i, :lt].cpu(), p[i, :lt, 0].detach().cpu(), "-", lw=1.2, label=name)
            ax.set(xlabel="t")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(title)
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_accuracy_vs_drop(curves: Mapping[str, Mapping[float, float]], path: str | os.PathLike, *,
                          title: str) -> Path:
    """Test accuracy (%) against the fraction of observations dropped, one line per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    try:
        for name, pts in curves.items():
            xs = sorted(pts)
            ax.plot([100 * x for x in xs], [100 * pts[x] for x in xs], marker="o", label=name)
        ax.set(xlabel="observations dropped (%)", ylabel="test accuracy (%)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_series_curves(histories: Mapping[str, Sequence[Mapping]], metric: str, path: str | os.PathLike, *,
                       title: str) -> Path:
    """Training loss and the test metric against epoch, one line per run."""
    plt = _pyplot()
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for name, rows in histories.items():
            ep = [r["epoch"] for r in rows]
            ax_l.plot(ep, [r["train_loss"] for r in rows], label=name)
            scale = 100 if metric == "acc" else 1
            ax_m.plot(ep, [scale * r[f"test_{metric}"] for r in rows], label=name)
        ax_l.set(xlabel="epoch", ylabel="training loss", yscale="symlog")
        ax_m.set(xlabel="epoch", ylabel="test accuracy (%)" if metric == "acc" else "test MSE",
                 yscale="linear" if metric == "acc" else "log")
        for ax in (ax_l, ax_m):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(title)
        return _save(fig, path)
    finally:
        plt.close(fig)
