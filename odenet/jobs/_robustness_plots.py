"""PNGs of the robustness job: accuracy against epsilon with error bars (std over runs)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

from ._plots import _pyplot, _save

__all__ = ["plot_accuracy_sheet", "plot_attack_sheet"]


def _curve(d: Mapping[str, Mapping]) -> tuple[list, list, list]:
    e = sorted(d, key=float)
    mean = [100 * d[k]["mean"] for k in e]
    std = [100 * d[k]["std"] if math.isfinite(d[k]["std"]) else 0.0 for k in e]
    return [float(k) for k in e], mean, std


def _grid(n: int):
    cols = min(n, 3)
    return (n + cols - 1) // cols, cols


def plot_accuracy_sheet(summary: Mapping, path: str | os.PathLike) -> Path:
    """One panel per variant (view), one line per attack: accuracy (%) vs eps, ± std."""
    plt = _pyplot()
    names = list(summary)
    rows, cols = _grid(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    try:
        for ax, name in zip(axes.flat, names):
            s = summary[name]
            for a, d in s["attacks"].items():
                ax.errorbar(*_curve(d), marker="o", ms=3, capsize=2, label=a)
            if s["worst"]:
                ax.errorbar(*_curve(s["worst"]), color="k", ls="--", capsize=2, label="worst")
            ax.set(title=name, xlabel="ε (fraction of input range)", ylabel="accuracy (%)", ylim=(0, 100))
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle("Accuracy under attack per view (mean ± std over runs)")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_attack_sheet(summary: Mapping, path: str | os.PathLike) -> Path:
    """One panel per attack (and the worst case), one line per variant."""
    plt = _pyplot()
    attacks: list = []
    for s in summary.values():
        attacks += [a for a in s["attacks"] if a not in attacks]
    attacks.append("worst")
    rows, cols = _grid(len(attacks))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    try:
        for ax, a in zip(axes.flat, attacks):
            for name, s in summary.items():
                d = s["worst"] if a == "worst" else s["attacks"].get(a)
                if d:
                    ax.errorbar(*_curve(d), marker="o", ms=3, capsize=2, label=name)
            ax.set(title=a, xlabel="ε (fraction of input range)", ylabel="accuracy (%)", ylim=(0, 100))
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(attacks):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle("Accuracy under each attack (mean ± std over runs)")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)
