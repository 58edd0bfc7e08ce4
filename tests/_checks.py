"""Helpers shared by the tests: central finite differences, large random weights (a field far
from its initialisation) and a call counter for a patched function."""

import torch


def central_difference(loss, w: torch.Tensor, index: tuple, eps: float = 1e-6) -> float:
    """``(loss(w + eps e) - loss(w - eps e)) / (2 eps)`` for the unit tensor ``e`` at ``index``
    of the parameter ``w`` (changed in place and restored); ``loss`` takes no arguments."""
    e = torch.zeros_like(w)
    e[index] = 1.0
    with torch.no_grad():
        w.add_(eps * e)
        up = loss()
        w.sub_(2 * eps * e)
        down = loss()
        w.add_(eps * e)
    return (up - down).item() / (2 * eps)


def big_weights(module, scale: float, seed: int = 0):
    """Overwrite every parameter of ``module`` with ``scale`` times standard normal draws."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def count_calls(monkeypatch, owner, name: str) -> list:
    """Replace ``owner.name`` by a wrapper that appends 1 to the returned list per call."""
    calls = []
    real = getattr(owner, name)

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(owner, name, counting)
    return calls
