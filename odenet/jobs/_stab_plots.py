"""PNGs of the ``odenet stability`` report (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Mapping

import numpy as np

from ._plots import _pyplot, _save

__all__ = ["write_figures"]


def _regions(data, path) -> Path:
    plt = _pyplot()
    names = list(data["abs_R"])
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    try:
        x, y = data["x"], data["y"]
        for ax, name in zip(axes.flat, names):
            a = data["abs_R"][name]
            ax.contourf(x, y, (a <= 1).astype(float), levels=[0.5, 1.5], colors=["#9ecae1"])
            ax.contour(x, y, a, levels=[1.0], colors="k", linewidths=0.8)
            ax.axhline(0, color="grey", lw=0.5)
            ax.axvline(0, color="grey", lw=0.5)
            ax.set_title(name, fontsize=10)
            ax.set_aspect("equal")
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.suptitle("Stability regions |R(z)| <= 1 (shaded), measured from each registered method's step")
        fig.supxlabel("Re z = Re(h lambda)")
        fig.supylabel("Im z")
        return _save(fig, path)
    finally:
        plt.close(fig)


def _gradients(data, path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        depths = data["depths"]
        labels = {"plain": "plain x<-tanh(Wx)", "resnet": "ResNet (euler, h=1)", "ode": "ODE-scaled (euler, h=1/L)",
                  "implicit": "implicit (backward Euler, h=1/L)"}
        for k, ys in data["curves"].items():
            ax.plot(depths, ys, marker="o", label=labels.get(k, k))
        ax.set(xscale="log", yscale="log", xlabel="depth L", ylabel="gradient gain |dl/dx_0| / |dl/dx_L|",
               title=f"Gradient norm vs depth (Lip f <= {data['c']})")
        ax.set_ylim(bottom=1e-40)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return _save(fig, path)
    finally:
        plt.close(fig)


def _norms(skew, schrod, path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    try:
        if skew:
            for k, ys in skew["curves"].items():
                axes[0].plot(range(len(ys)), ys, label=k)
            axes[0].set(yscale="log", xlabel="step n", ylabel="|x_n| / |x_0|",
                        title=f"Skew field x' = Sx, ||S|| = 1, h = {skew['h']}")
            axes[0].legend(fontsize=8)
            axes[0].grid(alpha=0.3)
        if schrod:
            for k, ys in schrod["curves"].items():
                axes[1].plot(range(len(ys)), ys, label=k)
            axes[1].set(xlabel="step n", ylabel="||psi_n||",
                        title=f"Schrodinger eigenstate E = 1, dt = {schrod['dt']}")
            axes[1].legend(fontsize=8)
            axes[1].grid(alpha=0.3)
        return _save(fig, path)
    finally:
        plt.close(fig)


def _edge_of_chaos(data, path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        gs = np.linspace(0.3, 2.2, 200)
        from ..analysis import tanh_rnn_mean_field_lambda1

        ax.plot(gs, [tanh_rnn_mean_field_lambda1(g) for g in gs], "k-", lw=1, label="mean field / log g")
        ax.plot(data["gains"], data["orthogonal"], "o", label="measured, W orthogonal (n=256)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(1, color="grey", lw=0.5, ls="--")
        ax.set(xlabel="gain g", ylabel="lambda_1 (per step)", title="tanh RNN h <- tanh(gWh): edge of chaos at g = 1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_figures(figures: Mapping[str, object], out: Path) -> List[Path]:
    """Write the PNGs for which the run left data in ``figures``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if "regions" in figures:
        paths.append(_regions(figures["regions"], out / "stability_regions.png"))
    if "gradient_vs_depth" in figures:
        paths.append(_gradients(figures["gradient_vs_depth"], out / "gradient_vs_depth.png"))
    if "skew" in figures or "schrodinger" in figures:
        paths.append(_norms(figures.get("skew"), figures.get("schrodinger"), out / "norm_growth.png"))
    if "edge_of_chaos" in figures:
        paths.append(_edge_of_chaos(figures["edge_of_chaos"], out / "lambda1_vs_gain.png"))
    return paths
