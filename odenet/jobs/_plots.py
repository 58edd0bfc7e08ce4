"""PNG plots of training runs and robustness curves (matplotlib, Agg backend).

The functions take plain data (lists of metric rows, dicts of accuracies) and write
one PNG each; they never open a window, so they run on headless machines and in
tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["plot_training_curves", "plot_nfe_per_epoch", "plot_accuracy_vs_epsilon", "plot_cross_solver"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    from .._io import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_nfe_per_epoch(histories: Mapping[str, Sequence[Mapping]], path: str | os.PathLike,
                       *, title: str = "Function evaluations per training batch") -> Path:
    """Forward and backward vector-field evaluations per batch against epoch, one line per run.

    A Neural ODE whose field stiffens during training shows a rising forward curve; a fixed-step
    view a flat one. Backward counts evaluations plus vector-Jacobian products.

    Parameters
    ----------
    histories : mapping of str to list of dict
        Run name -> metric rows with ``epoch``, ``nfe_forward``, ``nfe_backward`` and
        ``vjp_backward``.
    path : path
        PNG destination.
    """
    plt = _pyplot()
    fig, (ax_f, ax_b) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for name, rows in histories.items():
            if not rows:
                continue
            ep = [r["epoch"] for r in rows]
            ax_f.plot(ep, [r["nfe_forward"] for r in rows], marker="o", label=name)
            ax_b.plot(ep, [r["nfe_backward"] + r["vjp_backward"] for r in rows], marker="o", label=name)
        ax_f.set(xlabel="epoch", ylabel="forward evaluations per batch", yscale="log")
        ax_b.set(xlabel="epoch", ylabel="backward evaluations + VJPs per batch", yscale="symlog")
        for ax in (ax_f, ax_b):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(title)
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_training_curves(histories: Mapping[str, Sequence[Mapping]], path: str | os.PathLike,
                         *, title: str = "Training curves") -> Path:
    """Training loss and test accuracy against epoch, one line per run.

    Parameters
    ----------
    histories : mapping of str to list of dict
        Run name -> metric rows with ``epoch``, ``train_loss`` and ``test_acc``.
    path : path
        PNG destination.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for name, rows in histories.items():
            if not rows:
                continue
            ep = [r["epoch"] for r in rows]
            ax_loss.plot(ep, [r["train_loss"] for r in rows], marker="o", label=name)
            ax_acc.plot(ep, [100 * r["test_acc"] for r in rows], marker="o", label=name)
        ax_loss.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log")
        ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(title)
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_accuracy_vs_epsilon(curves: Mapping[str, Mapping[float, float]],
                             path: str | os.PathLike, *,
                             title: str = "Accuracy under FGSM",
                             xlabel: str = "epsilon (fraction of the input range)",
                             dashed: Mapping[str, Mapping[float, float]] | None = None,
                             labels: tuple[str, str] = ("", "")) -> Path:
    """Accuracy against attack size, one line per model.

    Parameters
    ----------
    curves : mapping of str to mapping of float to float
        Model name -> {epsilon: accuracy in [0, 1]}.
    path : path
        PNG destination.
    dashed : mapping, optional
        A second attack per model (same form), drawn dashed in the model's colour.
    labels : (str, str)
        Legend suffixes of the solid and the dashed lines.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for name, acc in curves.items():
            eps = sorted(acc)
            (line,) = ax.plot(eps, [100 * acc[e] for e in eps], marker="o",
                              label=f"{name} {labels[0]}".strip())
            second = (dashed or {}).get(name)
            if second:
                e2 = sorted(second)
                ax.plot(e2, [100 * second[e] for e in e2], marker="s", ls="--", color=line.get_color(),
                        label=f"{name} {labels[1]}".strip())
        ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title, ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_cross_solver(matrix: Mapping[str, Mapping[str, float]], path: str | os.PathLike, *,
                      title: str = "Test accuracy (%): trained as (rows) / evaluated as (columns)"
                      ) -> Path:
    """Heat map of the cross-solver accuracy matrix.

    Parameters
    ----------
    matrix : mapping of str to mapping of str to float
        Trained model -> {solver it is evaluated under: accuracy in [0, 1]}.
    path : path
        PNG destination.
    """
    plt = _pyplot()
    rows = list(matrix)
    cols: list[str] = []
    for r in rows:
        cols += [c for c in matrix[r] if c not in cols]
    values = [[100 * matrix[r].get(c, float("nan")) for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2, 0.8 * len(rows) + 1.5))
    try:
        im = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows)
        ax.set(xlabel="evaluated as", ylabel="trained as", title=title)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center",
                        color="white" if v < 60 else "black")
        fig.colorbar(im, ax=ax)
        return _save(fig, path)
    finally:
        plt.close(fig)
