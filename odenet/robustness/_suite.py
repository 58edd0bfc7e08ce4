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

from ._attacks import _loss_grad_sign, _perturb
from ._box import check_epsilon, linf_box
from ._nfe import count_nfe
from ._pgd import DEFAULT_SURROGATE, pgd_rows
from ._square import square_rows

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
    batch_epsilons : bool
        Craft the points of all epsilons of an attack in one batch (default) instead of one
        batch per epsilon. Same answers for a model whose rows do not interact (fixed-step
        solvers, up to floating-point summation order); an adaptive solver shares its step
        sizes over the batch, so its answers can differ slightly (docs/stability-and-robustness.md).
    """

    pgd_steps: int = 40
    pgd_alpha_factor: float = 2.5
    square_queries: int = 200
    square_epsilons: Sequence[float] | None = None
    surrogate: Mapping = field(default_factory=lambda: dict(DEFAULT_SURROGATE))
    batch_epsilons: bool = True


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def attack_suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float], *,
                 std: float, clamp: tuple[float, float] | None, attacks: Sequence[str] = ATTACKS,
                 settings: AttackSettings | None = None, seed: int = 0, batch_size: int = 128,
                 keep_inputs: Sequence[tuple[str, float]] = (), progress: Callable[[str], None] | None = None
                 ) -> dict:
    """Accuracy of ``model`` on ``(x, y)`` under each attack and epsilon.

    Every attack crafts the points of all its non-zero epsilons in one batch (``k`` epsilons:
    ``k * len(x)`` rows, each projected onto its own ball; see
    :attr:`AttackSettings.batch_epsilons`), with one random stream per (attack, epsilon) as
    if each epsilon ran alone, and evaluates each epsilon's points as their own batch. FGSM's
    direction does not depend on epsilon and is computed once. At epsilon 0 every attack
    returns ``x`` itself, so its prediction is the clean one (not recomputed). The model's
    parameters are frozen (``requires_grad=False``) for the call and restored afterwards:
    the attacks need input gradients only, and a solver whose backward pass would otherwise
    also integrate parameter adjoints (``gradient="adjoint"`` or ``"checkpointed_adjoint"``)
    skips them; method, tolerances and gradient mode stay the model's own.

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
    batch_size : int
        Test points per chunk; a chunk is crafted for all epsilons together
        (``k * batch_size`` rows).
    keep_inputs : sequence of (attack, epsilon)
        Return the adversarial inputs of these cases under ``result["inputs"]``.
    progress : callable, optional
        Called with a short label before each attack.

    Returns
    -------
    dict
        ``clean_accuracy``; ``attacks[name]`` with ``accuracy`` and ``flip_rate`` (dicts
        keyed by ``str(eps)``), and ``nfe`` (field evaluations, forward + backward, summed
        over the batched solves of crafting and evaluation at every epsilon of the attack),
        ``nfe_forward`` and ``time_s`` (totals over the attack's epsilons); ``worst``
        (per-point worst case over the adversarial attacks run) and ``strongest`` (the
        attack with the lowest accuracy) keyed by ``str(eps)``; ``inputs``.
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
    keep = {(a, float(b)) for a, b in keep_inputs}
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in frozen:
            p.requires_grad_(False)
        clean_pred = _predict(model, x, batch_size)
        clean_ok = clean_pred == y
        n_clean = int(clean_ok.sum())
        out: dict = {"n": len(y), "clean_accuracy": float(clean_ok.float().mean()), "attacks": {},
                     "worst": {}, "strongest": {}, "inputs": {}}
        per_point: dict[str, dict[str, torch.Tensor]] = {}
        for k, name in enumerate(attacks):
            if progress is not None:
                progress(name)
            cases = [(j, e) for j, e in enumerate(eps_list)
                     if not (name == "square" and square_eps is not None and e not in square_eps)]
            rec: dict = {"accuracy": {}, "flip_rate": {}}
            t0 = time.perf_counter()
            preds, advs = {}, {}
            with count_nfe(model) as nfe:
                run = [(j, e) for j, e in cases if e > 0]
                gens = [torch.Generator().manual_seed(int(seed) * 1000003 + 1009 * k + j) for j, _ in run]
                radii = [e / std for _, e in run]  # model units
                groups = [list(zip(radii, gens))] if settings.batch_epsilons else [[rg] for rg in zip(radii, gens)]
                crafted = [adv for grp in groups
                           for adv in _craft(name, model, x, y, grp, clamp, settings, batch_size)]
                for (j, e), adv in zip(run, crafted):
                    preds[e], advs[e] = _predict(model, adv, batch_size), adv
            for j, e in cases:
                pred = preds.get(e, clean_pred)  # eps = 0: every attack returns x itself
                ok = pred == y
                key = str(e)
                rec["accuracy"][key] = float(ok.float().mean())
                rec["flip_rate"][key] = (float((clean_ok & (pred != clean_pred)).sum()) / n_clean
                                         if n_clean else float("nan"))
                per_point.setdefault(key, {})[name] = ok
                if (name, e) in keep:
                    out["inputs"][(name, e)] = advs.get(e, x.detach().clone())
            rec["nfe"], rec["nfe_forward"] = nfe.total, nfe.forward
            rec["time_s"] = time.perf_counter() - t0
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
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)


def _craft(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, group, clamp,
           settings: AttackSettings, batch_size: int) -> list[torch.Tensor]:
    """Adversarial (or noisy) inputs for each ``(radius, generator)`` of ``group``, crafted together.

    Chunks of ``batch_size`` points are crafted one after another, each for every radius at
    once (rows ``[radius 0 | radius 1 | ...]``); each radius's generator is drawn from in the
    order a separate run on that radius alone would draw from it.
    """
    if name == "noise":  # Gaussian noise of standard deviation `radius`, clipped to the range
        noisy = [x + en * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device) for en, g in group]
        return [z.clamp(*clamp) if clamp is not None else z for z in noisy]
    parts: list[list[torch.Tensor]] = [[] for _ in group]
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].detach(), y[i:i + batch_size]
        nb = len(xb)
        if name == "fgsm":
            direction = _loss_grad_sign(model, xb, yb)  # the same for every radius
            for r, (en, _g) in enumerate(group):
                parts[r].append(_perturb(xb, direction, en, clamp))
            continue
        boxes = [linf_box(xb, en, clamp) for en, _g in group]
        lower = torch.cat([lo for lo, _ in boxes])
        upper = torch.cat([hi for _, hi in boxes])
        xs, ys = xb.repeat(len(group), *[1] * (xb.dim() - 1)), yb.repeat(len(group))
        if name in ("pgd", "transfer"):
            starts = torch.cat([lo + torch.rand(xb.shape, generator=g, dtype=xb.dtype).to(xb.device) * (hi - lo)
                                for (lo, hi), (_en, g) in zip(boxes, group)])
            alpha = torch.cat([torch.full((nb,), settings.pgd_alpha_factor * en / settings.pgd_steps,
                                          dtype=xb.dtype, device=xb.device) for en, _g in group])
            if name == "pgd":
                adv = pgd_rows(model, starts, ys, lower, upper, alpha, steps=settings.pgd_steps)
            else:
                with model.using_solver(**dict(settings.surrogate)):
                    adv = pgd_rows(model, starts, ys, lower, upper, alpha, steps=settings.pgd_steps,
                                   early_stop=False)
        else:  # square
            spans = [(r * nb, (r + 1) * nb, en, g) for r, (en, g) in enumerate(group)]
            adv = square_rows(model, xs, ys, lower, upper, spans, queries=settings.square_queries)
        for r in range(len(group)):
            parts[r].append(adv[r * nb:(r + 1) * nb])
    return [torch.cat(p) for p in parts]
