"""Is a trained model an ODE or a discrete ResNet? :func:`check_solver_robustness`.

A model whose weights define an ODE gives predictions that *converge* as its solver is
refined: under a method of order ``p`` at ``n`` steps the features differ from the limit
by ``C n^{-p}``, so the differences between successive refinements shrink by about
``2^p`` per doubling. A model that only works as the one discretisation it was trained
with (a discrete ResNet) shows no such convergence: refining its solver changes its
predictions by an amount that does not shrink at that rate, and the refined predictions
disagree with the trained ones.

The ladder: ``euler`` and ``rk4`` at 2, 4, 8, 16, 32 steps, ``dopri5`` at decreasing
tolerances, and implicit Euler at 32 steps. For each explicit method the *empirical order*
is the least-squares slope of ``log2 |F_n - F_{2n}|`` against ``log2 n`` over the three
finest refinements above round-off (``F`` the
features of the last ODE block on the data, ``|.|`` the RMS over the batch), negated.
The reference is dopri5 at the tightest tolerance.

Verdict: "this model is an ODE" when the Euler differences shrink at an empirical order
of at least ``0.7`` (Euler's is 1) *and* the predictions under the model's own (trained)
solver agree with the converged reference on at least 95 % of the inputs, i.e. what the
model computes is the ODE's flow and not the error of one discretisation of it; "this
model is a discrete ResNet" otherwise (a piecewise-constant-in-time field with large
unrelated blocks, for example, converges under refinement, but to something else than
what its 4-step Euler ResNet computes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["SolverRobustnessReport", "check_solver_robustness"]

STEPS = (2, 4, 8, 16, 32)
TOLERANCES = (1e-3, 1e-5, 1e-7)
ODE_VERDICT = "this model is an ODE"
DISCRETE_VERDICT = "this model is a discrete ResNet"


@dataclass
class SolverRobustnessReport:
    """What :func:`check_solver_robustness` finds.

    Attributes
    ----------
    rows : list of dict
        One per solver of the ladder, the model's own solver first: ``solver``, ``method``, ``steps``/``rtol``,
        ``accuracy`` (None without labels), ``agreement`` (share of predictions equal to
        the reference's), ``feature_diff`` (RMS distance of the features to the reference)
        and ``refine_diff`` (to the same method at twice the steps; fixed-step methods).
    orders : dict
        Empirical order of each fixed-step explicit method (``nan`` when undefined).
    is_ode : bool
    verdict : str
    """

    rows: list = field(default_factory=list)
    orders: dict = field(default_factory=dict)
    is_ode: bool = False
    verdict: str = DISCRETE_VERDICT

    def table(self) -> str:
        """The ladder as a text table, ending in the verdict."""
        head = f"{'solver':<22}{'accuracy %':>11}{'agree %':>9}{'|F-F_ref|':>12}{'|F_n-F_2n|':>12}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}"
            ref = "-" if r.get("refine_diff") is None else f"{r['refine_diff']:.3g}"
            lines.append(f"{r['solver']:<22}{acc:>11}{100 * r['agreement']:>9.1f}{r['feature_diff']:>12.3g}{ref:>12}")
        lines.append("-" * len(head))
        lines.append("empirical orders: " + ", ".join(f"{m} {o:.2f}" for m, o in self.orders.items()))
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "orders": self.orders, "is_ode": self.is_ode, "verdict": self.verdict}


def _fit_order(steps, diffs) -> float:
    pts = [(math.log2(n), math.log2(d)) for n, d in zip(steps, diffs) if d is not None and d > 0]
    if len(pts) < 2:
        return float("inf") if all(d == 0 for d in diffs if d is not None) else float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return -sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


@torch.no_grad()
def check_solver_robustness(model: nn.Module, data: Any, *, labels: Optional[torch.Tensor] = None,
                            max_samples: int = 256, out: Optional[str] = None,
                            steps=STEPS, tolerances=TOLERANCES) -> SolverRobustnessReport:
    """Evaluate ``model`` under a ladder of solvers and say whether it is an ODE.

    Parameters
    ----------
    model : nn.Module
        A model with ``ode_blocks()``, ``using_solver(...)`` and ``features(x)`` (the
        classifiers of odenet); its solver is restored afterwards.
    data : DataBundle or Tensor
        Inputs (a DataBundle: its test split, with labels).
    labels : Tensor, optional
        Labels for the accuracies when ``data`` is a tensor.
    max_samples : int
        Use at most this many inputs.
    out : path, optional
        Write ``solver_robustness.png`` (differences vs steps) there.

    Returns
    -------
    SolverRobustnessReport
    """
    from ..data._classification import DataBundle

    if isinstance(data, DataBundle):
        x, labels = data.x_test, data.y_test
    elif isinstance(data, torch.Tensor):
        x = data
    else:
        raise TypeError(f"data must be a DataBundle or a tensor of inputs, got {type(data).__name__}")
    for name in ("using_solver", "features"):
        if not hasattr(model, name):
            raise TypeError(f"model must have `{name}` (an odenet classifier), {type(model).__name__} has not")
    if not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")
    x = x[:max_samples]
    labels = None if labels is None else labels[:max_samples]
    device = next(model.parameters()).device
    x = x.to(device)
    was_training = model.training
    model.eval()

    def run(**cfg):
        with model.using_solver(**cfg):
            feats = model.features(x)
            logits = model(x)
        return feats.reshape(feats.shape[0], -1).double(), logits.argmax(1)

    def rms(a, b):
        return float(torch.sqrt(torch.mean((a - b) ** 2)))

    own = model.ode_blocks()[0].solver_config()
    own_name = f"own: {own['method']}" + (f"/{own['steps']}" if own.get("steps") else "")
    try:
        ladder = [(own_name, "own", dict(own))]
        for m in ("euler", "rk4"):
            for n in steps:
                ladder.append((f"{m}/{n}", m, dict(method=m, steps=n, gradient="direct", options=None)))
        for tol in tolerances:
            ladder.append((f"dopri5 rtol={tol:g}", "dopri5",
                           dict(method="dopri5", rtol=tol, atol=tol * 1e-1, gradient="direct", options=None)))
        ladder.append((f"implicit_euler/{max(steps)}", "implicit_euler",
                       dict(method="implicit_euler", steps=max(steps), gradient="direct",
                            options={"root_rtol": 1e-6, "root_atol": 1e-7})))
        results = {}
        for name, _, cfg in ladder:
            results[name] = run(**cfg)
        ref_f, ref_p = results[f"dopri5 rtol={min(tolerances):g}"]
        rows = []
        for name, m, cfg in ladder:
            f, p = results[name]
            nxt = f"{m}/{2 * cfg['steps']}" if cfg.get("steps") and m in ("euler", "rk4") else None
            row = {"solver": name, "method": m, "steps": cfg.get("steps"), "rtol": cfg.get("rtol"),
                   "accuracy": None if labels is None else float((p.cpu() == labels.cpu()).float().mean()),
                   "agreement": float((p == ref_p).float().mean()), "feature_diff": rms(f, ref_f),
                   "refine_diff": rms(f, results[nxt][0]) if nxt in results else None}
            rows.append(row)
    finally:
        model.train(was_training)
    orders = {}
    # rk4 reaches round-off quickly: fit only differences well above it
    floor = 1e3 * torch.finfo(x.dtype if x.is_floating_point() else torch.float32).eps * float(
        torch.sqrt(torch.mean(ref_f ** 2)))
    for m in ("euler", "rk4"):
        rr = [r for r in rows if r["method"] == m and r["refine_diff"] is not None]
        rr = [r for r in rr if r["refine_diff"] > floor][-3:]  # the finest steps: the asymptotic regime
        orders[m] = _fit_order([r["steps"] for r in rr], [r["refine_diff"] for r in rr]) if rr else float("inf")
    own_row = rows[0]
    is_ode = bool(orders["euler"] >= 0.7 and own_row["agreement"] >= 0.95)
    report = SolverRobustnessReport(rows=rows, orders=orders, is_ode=is_ode,
                                    verdict=ODE_VERDICT if is_ode else DISCRETE_VERDICT)
    if out is not None:
        _plot(report, Path(out) / "solver_robustness.png")
    return report


def _plot(report: SolverRobustnessReport, path: Path) -> Path:
    from ..jobs._plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for m, marker in (("euler", "o"), ("rk4", "s")):
        rr = [r for r in report.rows if r["method"] == m]
        ax.loglog([r["steps"] for r in rr], [max(r["feature_diff"], 1e-16) for r in rr], marker=marker,
                  label=f"{m} (order {report.orders.get(m, float('nan')):.2f})")
    ax.set_xlabel("steps")
    ax.set_ylabel("RMS feature distance to dopri5 (tight)")
    ax.set_title(report.verdict)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    plt.close(fig)
    return path
