"""Training options on the dynamics of an ODE model: kinetic-energy, Jacobian and
depth-smoothness regularisation (:class:`DynamicsRegularizer`) and solver-robust training
(:class:`SolverSampler`).

Kinetic energy and Jacobian Frobenius norm (Finlay et al. 2020, "How to train your
neural ODE") penalise

.. math::

    R_K = \\int_0^{t_1} \\|f(t, x(t))\\|^2 \\, dt, \\qquad
    R_J = \\int_0^{t_1} \\|\\partial f / \\partial x\\|_F^2 \\, dt

(per sample, averaged over the batch). Both make the learned flow straight and its
Jacobian small, which is what lets another solver reproduce it: a field whose
trajectories are straight lines is integrated exactly by every consistent method.

How the integrals are approximated: while a block solves, a forward hook on its field
records every call ``(t, x)``. After the forward pass the regulariser keeps, for every
distinct time, the *last* state the solver evaluated there (for a root-finding method the
converged root), sorts the times and forms the Riemann sum over the intervals of
``[0, t1]`` they cut: a left sum for explicit methods (the states at step starts), a
right sum for backward Euler (the roots at step ends). Under forward Euler the kinetic
term is exactly the augmented-state Euler value ``h sum_k |f(t_k, x_k)|^2`` of Finlay et
al. The field is re-evaluated at the recorded (detached) states with a graph to its
parameters, so this works for every gradient mode (the implicit-function theorem and the
adjoints record no graph through the solve); the gradient does not flow through the
states themselves. ``R_J`` uses Hutchinson's estimator ``E |eps^T J|^2 = |J|_F^2`` with one
Gaussian probe per sample and time.

The smoothness term ``R_S = sum_k |theta_{k+1} - theta_k|^2 / h`` (the discrete H1
seminorm in depth of a :class:`odenet.LayerwiseField`'s blocks,
:meth:`~odenet.LayerwiseField.smoothness_penalty`, summed over the blocks of the model)
needs no forward pass: it is a function of the weights alone, added at every batch.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

import torch
from torch import nn

__all__ = ["DynamicsRegularizer", "SolverSampler", "SOLVER_FAMILIES"]


def _blocks(model: nn.Module) -> list:
    m = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return list(m.ode_blocks()) if hasattr(m, "ode_blocks") else []


class DynamicsRegularizer:
    """``kinetic * R_K + jacobian * R_J + smoothness * R_S`` of every ODE block of a model,
    for :func:`odenet.fit`.

    Parameters
    ----------
    model : nn.Module
        A model with ``ode_blocks()``; hooks are installed on the blocks' fields.
    kinetic, jacobian : float
        Weights of the kinetic-energy and Jacobian-Frobenius terms (>= 0).
    smoothness : float
        Weight of the depth-smoothness term (>= 0); every block's field must then be a
        :class:`odenet.LayerwiseField` of identically built blocks (``ValueError`` otherwise).
        At least one of the three weights must be positive.

    Call :meth:`value` (or the object itself) after a forward pass to get the penalty
    (a 0-dim tensor with a graph to the fields' parameters); :meth:`remove` takes the
    hooks off. Recording happens only while the model is in training mode.
    """

    def __init__(self, model: nn.Module, *, kinetic: float = 0.0, jacobian: float = 0.0, smoothness: float = 0.0):
        for name, v in (("kinetic", kinetic), ("jacobian", jacobian), ("smoothness", smoothness)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise ValueError(f"`{name}` must be a non-negative finite number (a penalty weight), got {v!r}")
        if not kinetic and not jacobian and not smoothness:
            raise ValueError("DynamicsRegularizer needs kinetic > 0, jacobian > 0 or smoothness > 0")
        self.kinetic, self.jacobian, self.smoothness = float(kinetic), float(jacobian), float(smoothness)
        self.blocks = _blocks(model)
        if not self.blocks:
            raise ValueError(f"{type(model).__name__} has no ode_blocks(); nothing to regularise")
        from ..fields._layerwise import LayerwiseField

        if self.kinetic or self.jacobian:
            for i, b in enumerate(self.blocks):
                if isinstance(b.field, LayerwiseField):
                    # ODEBlock calls a layerwise field's blocks (or pieces) directly, so a hook on the
                    # field would record nothing and the penalty would silently be zero
                    raise ValueError(
                        f"the kinetic and Jacobian penalties record the calls of a field, but ODE block {i} of "
                        f"{type(model).__name__} integrates a LayerwiseField, whose blocks it calls directly; "
                        "they are not supported there: set kinetic=jacobian=0 (the smoothness penalty is)")
        if self.smoothness:
            for i, b in enumerate(self.blocks):
                if not isinstance(b.field, LayerwiseField):
                    raise ValueError(
                        f"`smoothness` penalises differences between the blocks of a LayerwiseField, but ODE "
                        f"block {i} of {type(model).__name__} has a {type(b.field).__name__}; build the model "
                        "with layers > 1 (`odenet train --layers L`) or drop the smoothness weight")
                b.field.check_identical("the smoothness penalty")
        self._records: dict[int, dict] = {}
        self._handles = []
        if self.kinetic or self.jacobian:  # the smoothness term needs no record of the solve
            self._handles = [b.field.register_forward_hook(self._hook(i)) for i, b in enumerate(self.blocks)]
            # a new solve starts a new record: calls made after the forward pass (an adjoint's
            # or a checkpoint's recomputation during backward) never leak into the next batch
            self._handles += [b.register_forward_pre_hook(self._clear(i)) for i, b in enumerate(self.blocks)]
        self.last: dict[str, float] = {}

    def _hook(self, i: int):
        def record(module, args, out):
            if not module.training or len(args) < 2 or not isinstance(args[1], torch.Tensor):
                return
            t, x = args[0], args[1]
            tf = float(t) if isinstance(t, torch.Tensor) and t.numel() == 1 else (
                float(t) if isinstance(t, (int, float)) else None)
            if tf is None:  # per-sample times: not supported by this quadrature
                return
            try:
                self._records.setdefault(i, {})[round(tf, 12)] = x.detach()
            except RuntimeError:  # a functorch-wrapped state (a JVP inside a root finder)
                pass
        return record

    def _clear(self, i: int):
        def clear(module, args):
            self._records.pop(i, None)
        return clear

    def remove(self) -> None:
        """Take the hooks off the fields."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _block_terms(self, block, points: dict) -> tuple[torch.Tensor, torch.Tensor]:
        t1 = float(block.solver_config().get("t1") or getattr(block, "t1", 1.0) or 1.0)
        times = sorted(points)
        right = times[0] > 0.0 or len(times) == 1 and times[0] >= t1  # roots at step ends
        edges = ([0.0] + times) if right else (times + [t1])
        rk = rj = None
        for k, tk in enumerate(times):
            w = edges[k + 1] - edges[k]
            if w <= 0:
                continue
            x = points[tk].requires_grad_(self.jacobian > 0)
            fx = block.field(torch.tensor(tk, dtype=torch.float64, device=x.device), x)
            B = x.shape[0]
            if self.kinetic:
                term = w * fx.pow(2).reshape(B, -1).sum(1).mean()
                rk = term if rk is None else rk + term
            if self.jacobian:
                eps = torch.randn_like(fx)
                (vjp,) = torch.autograd.grad(fx, x, eps, create_graph=True)
                term = w * vjp.pow(2).reshape(B, -1).sum(1).mean()
                rj = term if rj is None else rj + term
        zero = next(block.field.parameters()).new_zeros(())
        return (zero if rk is None else rk), (zero if rj is None else rj)

    def smoothness_term(self) -> torch.Tensor:
        """``R_S``: the sum of the blocks' :meth:`~odenet.LayerwiseField.smoothness_penalty`."""
        terms = [b.field.smoothness_penalty() for b in self.blocks]
        return terms[0] if len(terms) == 1 else torch.stack(terms).sum()

    def value(self, model: nn.Module | None = None) -> torch.Tensor:
        """The penalty of the latest forward pass (clears the records) plus the smoothness term."""
        rs = self.smoothness_term() if self.smoothness else None
        total = self._dynamics() if (self.kinetic or self.jacobian) else None
        if rs is None:
            return total if total is not None else next(self.blocks[0].field.parameters()).new_zeros(())
        self.last["smoothness"] = float(rs.detach())
        return self.smoothness * rs if total is None else total + self.smoothness * rs

    def _dynamics(self) -> torch.Tensor:
        total_k = total_j = None
        for i, block in enumerate(self.blocks):
            points = self._records.get(i)
            if not points:
                continue
            rk, rj = self._block_terms(block, points)
            total_k = rk if total_k is None else total_k + rk
            total_j = rj if total_j is None else total_j + rj
        self._records = {}
        if total_k is None:
            return next(self.blocks[0].field.parameters()).new_zeros(())
        self.last.update(kinetic=float(total_k.detach()), jacobian=float(total_j.detach()))
        return self.kinetic * total_k + self.jacobian * total_j

    __call__ = value


#: Solver families of :class:`SolverSampler`: the configurations a batch may be trained with.
SOLVER_FAMILIES: dict[str, list[dict[str, Any]]] = {
    # cheap explicit discretisations of [0, 1], first to fourth order, h <= 1/4 (a 2-step
    # Euler, h = 1/2, left a trained parabolic field's stability region and training collapsed)
    "explicit": [dict(method=m, steps=s, gradient="direct", options=None)
                 for m, s in (("euler", 4), ("euler", 8), ("midpoint", 4), ("rk4", 4))],
}


class SolverSampler:
    """Solver-robust training: every batch is trained under a solver drawn at random.

    With probability ``p`` a batch uses a configuration drawn uniformly from ``family``
    (see :data:`SOLVER_FAMILIES`), otherwise the model's own solver. Training one set of
    weights under several discretisations makes the weights fit the *ODE* they all
    approximate rather than the error of one of them, so the model keeps its accuracy when
    evaluated under another solver (docs/three-views.md, "Training for solver swaps").

    Draws come from a ``random.Random(seed + 1000 * epoch + batch)``, so a resumed run
    draws the same solvers. :meth:`restore` puts the model's own solver back (the loop
    calls it after every epoch, before evaluation).
    """

    def __init__(self, family: str | Sequence[Mapping[str, Any]] = "explicit", *, p: float = 0.5, seed: int = 0):
        if isinstance(family, str):
            if family not in SOLVER_FAMILIES:
                raise ValueError(f"unknown solver family {family!r}; choose one of {', '.join(SOLVER_FAMILIES)} "
                                 "or pass a list of solver settings")
            family = SOLVER_FAMILIES[family]
        self.family = [dict(c) for c in family]
        if not self.family:
            raise ValueError("the solver family is empty; pass at least one solver setting")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"`p` (the share of batches trained under a drawn solver) must be in (0, 1], got {p!r}")
        self.p, self.seed = float(p), int(seed)
        self._own: list | None = None

    def draw(self, model: nn.Module, epoch: int, batch: int) -> dict | None:
        """Configure ``model`` for this batch; return the drawn setting (None: its own)."""
        blocks = _blocks(model)
        if self._own is None:
            self._own = [dict(b._cfg) for b in blocks]
        self.restore(model, keep=True)
        rng = random.Random(self.seed + 1000 * epoch + batch)
        if rng.random() >= self.p:
            return None
        cfg = rng.choice(self.family)
        for b in blocks:
            b.configure(**cfg)
        return cfg

    def restore(self, model: nn.Module, keep: bool = False) -> None:
        """Give every block its own solver back."""
        if self._own is None:
            return
        for b, cfg in zip(_blocks(model), self._own):
            b._cfg = dict(cfg)
        if not keep:
            self._own = None
