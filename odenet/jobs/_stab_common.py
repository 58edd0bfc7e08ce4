"""What the measurements of ``odenet stability`` share: the run context and small helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict

import numpy as np
import torch

__all__ = ["Context", "rel", "num", "exact_normalise", "one_step_methods"]


@dataclass
class Context:
    """The state one ``odenet stability`` run hands to every measurement.

    Attributes
    ----------
    full : bool
        Run the long versions (``--full``).
    seed : int
        Base random seed; each claim derives its own generator from it.
    figures : dict
        Plot data the measurements leave for the report (``name -> data``).
    tick : callable
        Advances the progress bar's postfix with a short status text.
    cache : dict
        Results several measurements share within one run (the trained models of F3).
    """

    full: bool = False
    seed: int = 0
    figures: Dict[str, Any] = field(default_factory=dict)
    tick: Callable[[str], None] = lambda text: None
    cache: Dict[str, Any] = field(default_factory=dict)

    def generator(self, salt: int) -> torch.Generator:
        """A torch generator seeded from ``seed`` and a claim-specific ``salt``."""
        return torch.Generator().manual_seed(1000 * self.seed + salt)

    def manual_seed(self, salt: int) -> None:
        """Seed torch's global generator (module initialisation) from ``seed`` and ``salt``."""
        torch.manual_seed(1000 * self.seed + salt)


def one_step_methods(fixed_only: bool = False) -> dict:
    """The registered methods with a single step (``one_step``), which have a stability
    function ``R(z)``: multistep Adams and ``scipy_solver`` run their own loop and are left out."""
    import solvers

    return {n: c for n, c in solvers.METHODS.items() if c.one_step and not (fixed_only and c.adaptive)}


def rel(a, b) -> float:
    """Largest relative difference ``|a - b| / max(1e-300, |b|)`` over arrays (or numbers)."""
    a = np.asarray(a, dtype=np.complex128)
    b = np.asarray(b, dtype=np.complex128)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def num(v: float):
    """A float for ``results.json``: ``inf`` becomes the string ``"inf"`` (JSON has none)."""
    v = float(v)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def exact_normalise(linear: torch.nn.Linear, norm: float) -> torch.nn.Linear:
    """Scale ``linear.weight`` in place so that its spectral norm (by SVD) is exactly ``norm``."""
    with torch.no_grad():
        w = linear.weight
        w.mul_(norm / torch.linalg.matrix_norm(w, ord=2))
    return linear
