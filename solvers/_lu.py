"""Batched LU factorisation that stays correct on multi-threaded CPUs.

PyTorch's CPU ``lu_factor`` splits a batch over threads and calls LAPACK's ``getrf`` from
several of them at once. Once ``torch.set_num_threads`` has been called (odenet's own jobs
call it; so do many user scripts), MKL's ``getrf`` is not safe to run that way for matrices
of more than ~128 rows: it returns pivots outside ``1..n`` (``lu_solve`` then raises "Pivots
given to lu_solve must all be greater or equal to 1" after MKL prints "Parameter 6 was
incorrect on entry to SLASWP") or, worse, valid-looking pivots with a wrong factorisation.
Measured here with torch 2.14.1: batch 3 of random 152 x 152 matrices, 2 threads, 50 of 57
sizes between 152 and 400 reconstructed wrongly. Upstream: pytorch/pytorch#142815 (open),
fix proposed in pytorch/pytorch#181570. ``torch.linalg.solve`` and ``inv`` share the bug;
``lu_solve`` with correct factors does not.

:func:`lu_factor_ex` factors such batches one matrix at a time (each call alone, so MKL may
still thread inside it) and everything else in one batched call.
"""

from __future__ import annotations

import torch

#: matrices at least this large are factored one at a time on a multi-threaded CPU (the
#: wrong results start near 130 rows here; the margin covers other MKL builds and CPUs)
SEQUENTIAL_FROM = 64


def lu_factor_ex(A: torch.Tensor):
    """``torch.linalg.lu_factor_ex`` for a ``(B, n, n)`` batch, safe against the threaded-MKL
    bug described above; returns ``(LU, pivots, info)`` like torch."""
    B, n = A.shape[0], A.shape[-1]
    if A.device.type != "cpu" or B < 2 or n < SEQUENTIAL_FROM or torch.get_num_threads() < 2:
        return torch.linalg.lu_factor_ex(A)
    parts = [torch.linalg.lu_factor_ex(A[i]) for i in range(B)]
    return tuple(torch.stack(p) for p in zip(*parts))
