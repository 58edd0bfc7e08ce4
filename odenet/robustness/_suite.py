"""One model against every attack of the robustness protocol, on one fixed set of inputs.

:func:`attack_suite` runs FGSM, PGD through the model's own solver, PGD transferred from a
fixed-step surrogate with the same weights, the gradient-free Square attack and Gaussian
noise at each epsilon (raw units: a fraction of the raw input range), and reports per
attack and epsilon the accuracy, the flip rate (clean-correct points whose prediction
changes), the vector-field evaluations spent and the time. ``worst`` is the per-point
worst case over the adversarial attacks run at that epsilon: a point counts as robust
only if every attack failed on it, so ``worst`` is at most the smallest single accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ._attacks import fgsm
from ._box import check_epsilon
from ._nfe import count_nfe
from ._pgd import DEFAULT_SURROGATE, pgd, transfer_pgd
from ._square import square_attack

__all__ = ["ATTACKS", "ADVERSARIAL", "AttackSettings", "attack_suite"]

#: Attacks of :func:`attack_suite`; all but ``noise`` are adversarial.
ATTACKS = ("fgsm", "pgd", "transfer", "square", "noise")
ADVERSARIAL = ("fgsm", "pgd", "transfer", "square")


@dataclass
class AttackSettings:
    """Budgets of the attacks (defaults: the robustness protocol of CLAIMS.md).

    Attributes
    ----------
    pgd_steps : int
        PGD iterations (40).
    pgd_alpha_factor : float
        PGD step ``alpha = pgd_alpha_factor * eps / pgd_steps`` (2.5: ``steps * alpha >= eps``).
    square_queries : int
        Square attack's queries per input.
    square_epsilons : sequence of float, optional
        Epsilons the Square attack runs at (default: all); it is the costliest attack on
        views whose forward solve is expensive.
    surrogate : mapping
        Solver of the transfer attack's surrogate (default rk4, 4 steps).
    """

    pgd_steps: int = 40
    pgd_alpha_factor: float = 2.5
    square_queries: int = 200
    square_epsilons: Sequence[float] | None = None
    surrogate: Mapping = field(default_factory=lambda: dict(DEFAULT_SURROGATE))


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def _batched(fn: Callable, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def attack_suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float], *,
                 std: float, clamp: tuple[float, float] | None, attacks: Sequence[str] = ATTACKS,
                 settings: AttackSettings | None = None, seed: int = 0, batch_size: int = 128,
                 keep_inputs: Sequence[tuple[str, float]] = (), progress: Callable[[str], None] | None = None
                 ) -> dict:
    """Accuracy of ``model`` on ``(x, y)`` under each attack and epsilon.

    Parameters
    ----------
    model : nn.Module
        The classifier, evaluated (and attacked, except by ``transfer``) under the solver
        its blocks are configured with. Put in eval mode for the call.
    x, y : torch.Tensor
        The fixed test inputs (normalised, model units) and labels.
    epsilons : sequence of float
        Attack radii / noise standard deviations in raw units, each in [0, 1].
    std : float
        The data's normalisation scale: a raw radius ``e`` is ``e / std`` in model units.
    clamp : (float, float) or None
        The valid input range in model units (``data.normalised_range()``).
    attacks : sequence of str
        Names from :data:`ATTACKS`.
    settings : AttackSettings, optional
        Budgets (default: the protocol's).
    seed : int
        Seeds the random starts, the Square attack's draws and the noise; each
        (attack, epsilon) gets its own generator, so results repeat.
    keep_inputs : sequence of (attack, epsilon)
        Return the adversarial inputs of these cases under ``result["inputs"]``.
    progress : callable, optional
        Called with a short label before each (attack, epsilon).

    Returns
    -------
    dict
        ``clean_accuracy``; ``attacks[name]`` with ``accuracy``, ``flip_rate``, ``nfe``
        (field evaluations, forward + backward, summed over the batched solves of crafting
        and evaluation), ``nfe_forward`` and ``time_s``, each a dict keyed by ``str(eps)``;
        ``worst`` (per-point worst case over the adversarial attacks run) and
        ``strongest`` (the attack with the lowest accuracy) keyed the same way; ``inputs``.
    """
    settings = settings or AttackSettings()
    bad = [a for a in attacks if a not in ATTACKS]
    if isinstance(attacks, str) or bad:
        raise ValueError(f"unknown attack(s) {bad or attacks!r}; choose from {', '.join(ATTACKS)}")
    eps_list = [check_epsilon(e, "epsilons", upper=1.0) for e in epsilons]
    if not eps_list:
        raise ValueError("epsilons must not be empty")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std!r}")
    square_eps = None if settings.square_epsilons is None else {float(e) for e in settings.square_epsilons}
    was_training = model.training
    model.eval()
    try:
        clean_pred = _predict(model, x, batch_size)
        clean_ok = clean_pred == y
        out: dict = {"n": len(y), "clean_accuracy": float(clean_ok.float().mean()), "attacks": {},
                     "worst": {}, "strongest": {}, "inputs": {}}
        per_point: dict[str, dict[str, torch.Tensor]] = {}
        for k, name in enumerate(attacks):
            rec = {key: {} for key in ("accuracy", "flip_rate", "nfe", "nfe_forward", "time_s")}
            for j, e in enumerate(eps_list):
                if name == "square" and square_eps is not None and e not in square_eps:
                    continue
                if progress is not None:
                    progress(f"{name} eps={e:g}")
                gen = torch.Generator().manual_seed(int(seed) * 1000003 + 1009 * k + j)
                en = e / std  # radius in model units
                t0 = time.perf_counter()
                with count_nfe(model) as nfe:
                    x_adv = _run(name, model, x, y, en, clamp, settings, gen, batch_size)
                    pred = _predict(model, x_adv, batch_size)
                ok = pred == y
                key = str(e)
                rec["accuracy"][key] = float(ok.float().mean())
                n_clean = int(clean_ok.sum())
                rec["flip_rate"][key] = (float((clean_ok & (pred != clean_pred)).sum()) / n_clean
                                         if n_clean else float("nan"))
                rec["nfe"][key] = nfe.total
                rec["nfe_forward"][key] = nfe.forward
                rec["time_s"][key] = time.perf_counter() - t0
                per_point.setdefault(key, {})[name] = ok
                if (name, e) in {(a, float(b)) for a, b in keep_inputs}:
                    out["inputs"][(name, e)] = x_adv
            out["attacks"][name] = rec
        for key, by_attack in per_point.items():
            adv = {a: ok for a, ok in by_attack.items() if a in ADVERSARIAL}
            if not adv:
                continue
            robust = torch.stack(list(adv.values())).all(0)
            out["worst"][key] = float(robust.float().mean())
            out["strongest"][key] = min(adv, key=lambda a: (float(adv[a].float().mean()), a))
        return out
    finally:
        model.train(was_training)


def _run(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, en: float,
         clamp, settings: AttackSettings, gen: torch.Generator, batch_size: int) -> torch.Tensor:
    alpha = settings.pgd_alpha_factor * en / settings.pgd_steps
    if name == "fgsm":
        return _batched(lambda a, b: fgsm(model, a, b, en, clamp=clamp if en > 0 else None), x, y, batch_size)
    if name == "pgd":
        return _batched(lambda a, b: pgd(model, a, b, en, steps=settings.pgd_steps, alpha=alpha,
                                         clamp=clamp, generator=gen), x, y, batch_size)
    if name == "transfer":
        return _batched(lambda a, b: transfer_pgd(model, a, b, en, surrogate=settings.surrogate,
                                                  steps=settings.pgd_steps, alpha=alpha, clamp=clamp,
                                                  generator=gen), x, y, batch_size)
    if name == "square":
        return _batched(lambda a, b: square_attack(model, a, b, en, queries=settings.square_queries,
                                                   clamp=clamp, generator=gen), x, y, batch_size)
    # Gaussian noise of standard deviation en, clipped to the range
    if en == 0:
        return x.clone()
    z = x + en * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    return z.clamp(*clamp) if clamp is not None else z
