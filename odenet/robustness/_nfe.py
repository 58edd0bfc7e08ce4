"""Count the vector-field evaluations an attack spends, forward and backward."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["NFECount", "count_nfe"]


class NFECount:
    """Running totals over every solve of every ODE block inside a ``count_nfe`` block.

    ``forward`` sums ``n_f_evals``; ``backward`` sums ``n_f_evals_backward + n_vjp_evals``
    (read at the end, since backward counters fill in after ``backward`` runs). Counts are
    per batched solve: one evaluation of the field on a batch counts once.
    """

    def __init__(self) -> None:
        self._stats: list = []

    @property
    def forward(self) -> int:
        return sum(s.n_f_evals for s in self._stats)

    @property
    def backward(self) -> int:
        return sum(s.n_f_evals_backward + s.n_vjp_evals for s in self._stats)

    @property
    def total(self) -> int:
        return self.forward + self.backward


@contextlib.contextmanager
def count_nfe(model: nn.Module) -> Iterator[NFECount]:
    """Context manager: an :class:`NFECount` of all block solves of ``model`` inside it.

    Works on any model whose ODE blocks are :class:`odenet.ODEBlock` modules (found with
    ``model.modules()``); a model without blocks counts zero.
    """
    from .._block import ODEBlock

    counter = NFECount()

    def hook(block, _inputs, _output):
        counter._stats.extend(block._stats)  # the solves' own Stats objects (backward fills in)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ODEBlock)]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()
