"""Robustness checks: FGSM adversarial accuracy and accuracy under Gaussian noise.

Epsilons and noise levels are given in *raw input units* — for the digits, a
fraction of the pixel range [0, 1] — and converted to the normalised inputs the
model sees with the data's ``std``, so that one epsilon means the same
perturbation for models trained on the same data. Adversarial and noisy inputs
are clamped to the valid raw range when the data has one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data._classification import DataBundle, iterate_batches

__all__ = ["fgsm", "fgsm_accuracy", "accuracy_vs_epsilon", "noise_accuracy"]


def _check_eps(values: Sequence[float], name: str) -> list[float]:
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from exc
    if not vals:
        raise ValueError(f"{name} must not be empty")
    bad = [v for v in vals if not v >= 0 or v == float("inf")]
    if bad:
        raise ValueError(f"{name} must be finite and >= 0, got {bad}")
    return vals


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, *,
         clamp: tuple[float, float] | None = None) -> torch.Tensor:
    """Fast gradient sign method: ``x + epsilon * sign(grad_x loss(model(x), y))``.

    Parameters
    ----------
    model : nn.Module
        The classifier (used as is; call ``model.eval()`` first for attacks on the
        deployed model).
    x, y : torch.Tensor
        Inputs (in the model's input units) and integer labels.
    epsilon : float
        Step size in the model's input units (L-infinity radius), >= 0.
    clamp : (float, float), optional
        Valid input range; the result is clamped into it.

    Returns
    -------
    torch.Tensor
        The adversarial inputs, detached. With ``epsilon == 0`` and no clamping
        they equal ``x`` exactly.
    """
    (epsilon,) = _check_eps([epsilon], "epsilon")
    return _perturb(x, _loss_grad_sign(model, x, y), epsilon, clamp)


def _loss_grad_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sign(grad_x cross_entropy(model(x), y))``: FGSM's direction, the same for every epsilon."""
    x_adv = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
    return grad.sign()


def _perturb(x: torch.Tensor, direction: torch.Tensor, epsilon: float,
             clamp: tuple[float, float] | None) -> torch.Tensor:
    out = x.detach() + epsilon * direction
    if clamp is not None:
        out = out.clamp(clamp[0], clamp[1])
    return out.detach()


def fgsm_accuracy(model: nn.Module, data: DataBundle, epsilon: float, *,
                  batch_size: int = 256) -> float:
    """Test accuracy under an FGSM attack of raw size ``epsilon`` (see module notes)."""
    return accuracy_vs_epsilon(model, data, [epsilon], batch_size=batch_size)[0]


def accuracy_vs_epsilon(model: nn.Module, data: DataBundle, epsilons: Sequence[float], *,
                        batch_size: int = 256, split: str = "test") -> list[float]:
    """Accuracy under FGSM for each epsilon (raw units), on the test split by default.

    Epsilon 0 gives exactly the clean accuracy: the perturbation is then ``0 * sign``
    and the batches are those of the clean evaluation. The attack direction is computed
    once per batch and shared by all epsilons (one gradient per batch, not one per
    epsilon: FGSM's direction does not depend on the step size).

    Returns
    -------
    list of float
        Accuracies in [0, 1], one per epsilon.
    """
    eps = _check_eps(epsilons, "epsilons")
    x, y = _split(data, split)
    module = model
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    rng = data.normalised_range()
    try:
        correct = [0] * len(eps)
        for xb, yb in iterate_batches(x, y, batch_size):
            xb, yb = xb.to(device), yb.to(device)
            direction = _loss_grad_sign(module, xb, yb) if any(e > 0 for e in eps) else torch.zeros_like(xb)
            for i, e in enumerate(eps):
                x_adv = _perturb(xb, direction, e / data.std, rng if e > 0 else None)
                with torch.no_grad():
                    correct[i] += int((module(x_adv).argmax(1) == yb).sum())
        accs = [c / len(y) for c in correct]
    finally:
        module.train(was_training)
    return accs


def noise_accuracy(model: nn.Module, data: DataBundle, sigmas: Sequence[float], *,
                   seed: int = 0, batch_size: int = 256, split: str = "test") -> list[float]:
    """Accuracy with Gaussian noise of standard deviation ``sigma`` (raw units) added.

    The noise is drawn from a generator seeded with ``seed``, so results repeat;
    sigma 0 gives exactly the clean accuracy.
    """
    sig = _check_eps(sigmas, "sigmas")
    x, y = _split(data, split)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rng = data.normalised_range()
    accs = []
    try:
        with torch.no_grad():
            for s in sig:
                gen = torch.Generator().manual_seed(seed)
                correct = 0
                for xb, yb in iterate_batches(x, y, batch_size):
                    if s > 0:
                        noise = torch.randn(xb.shape, generator=gen, dtype=xb.dtype)
                        xb = xb + (s / data.std) * noise
                        if rng is not None:
                            xb = xb.clamp(*rng)
                    xb, yb = xb.to(device), yb.to(device)
                    correct += int((model(xb).argmax(1) == yb).sum())
                accs.append(correct / len(y))
    finally:
        model.train(was_training)
    return accs


def _split(data: DataBundle, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "test":
        return data.x_test, data.y_test
    if split == "train":
        return data.x_train, data.y_train
    raise ValueError(f"split must be 'test' or 'train', got {split!r}")
