"""The rebuilt-state check of the continuous adjoint: is the gradient it returns trustworthy?

The plain continuous adjoint (``gradient="adjoint"``) does not store the forward
trajectory; it rebuilds the state by integrating the field backwards in time alongside
the adjoint. For a dissipative field (large negative Jacobian eigenvalues, e.g. a trained
parabolic field) reverse time turns decay into growth: every local error is amplified
and the rebuilt state, and with it the gradient, can be wrong by orders of magnitude
while every step reports success (ANODE, Gholami et al. 2019).

The check is cheap: at every output time the forward solve stored the state, so the
backward pass compares the state it rebuilt with it. The mismatch is measured in units of
the tolerance, ``max_i |y_rebuilt_i - y_i| / (atol + rtol |y_i|)``, and recorded as
``Stats.adjoint_rebuild_error`` (the largest over the output times). Beyond
``rebuild_tol`` (a gradient option, default :data:`DEFAULT_REBUILD_TOL`) the backward
pass raises :class:`solvers.AdjointRebuildError`, naming the error and the fix; pass
``rebuild_tol=math.inf`` to keep only the stat.
"""

from __future__ import annotations

import math

import torch

from ._solution import AdjointRebuildError

__all__ = ["DEFAULT_REBUILD_TOL", "scaled_mismatch", "rebuild_error", "check_rebuilt"]

#: Largest accepted rebuilt-state mismatch, in units of ``atol + rtol |y|``. A healthy
#: backward solve stays within a few units (its own error control plus the forward's);
#: the plain adjoint on a dissipative field reaches 1e3 to 1e7.
DEFAULT_REBUILD_TOL = 100.0


def scaled_mismatch(y_rebuilt: torch.Tensor, y_stored: torch.Tensor, rtol, atol, rows: bool = False) -> torch.Tensor:
    """``max |y_rebuilt - y_stored| / (atol + rtol |y_stored|)``: a 0-dim tensor, or with
    ``rows`` one per sample (``[B]``, each row of a per-sample grid on its own scale).

    The scale is floored at the working precision, ``eps * max |y_stored|`` (of the row):
    rounding of the largest components reaches every component through the field, and a
    tolerance below the dtype's resolution (the default ``rtol=1e-7`` on a float32 state)
    cannot be met by any backward solve, healthy or not. Non-finite mismatches are inf."""
    lead = y_stored.shape[0] if rows else 1
    ys = torch.abs(y_stored).reshape(lead, -1)
    scale = (atol + rtol * torch.abs(y_stored)).reshape(lead, -1)
    if ys.shape[1] == 0:
        err = torch.zeros(lead, dtype=torch.float64, device=y_stored.device)
    else:
        scale = torch.maximum(scale, torch.finfo(ys.dtype).eps * ys.amax(dim=1, keepdim=True))
        diff = torch.abs(y_rebuilt.reshape(y_stored.shape) - y_stored).reshape(lead, -1)
        err = (diff / scale).amax(dim=1).to(torch.float64)
    err = torch.nan_to_num(err, nan=math.inf, posinf=math.inf)
    return err if rows else err[0]


def rebuild_error(y_rebuilt: torch.Tensor, y_stored: torch.Tensor, rtol, atol) -> float:
    """:func:`scaled_mismatch` of the whole state as a float (one host sync)."""
    return float(scaled_mismatch(y_rebuilt, y_stored, rtol, atol))


def check_rebuilt(y_rebuilt, y_stored, rtol, atol, stats, bound, t_at: float) -> None:
    """Record the mismatch of the rebuilt state at ``t_at`` and raise beyond ``bound``.

    Parameters
    ----------
    y_rebuilt, y_stored : Tensor
        The state the backward solve arrived at and the one the forward solve stored.
    rtol, atol : float or Tensor
        The forward solve's tolerances (the scale of the mismatch).
    stats : Stats
        ``adjoint_rebuild_error`` becomes the largest mismatch seen.
    bound : float or None
        ``None``: :data:`DEFAULT_REBUILD_TOL`; ``math.inf``: record only.

    Raises
    ------
    AdjointRebuildError
        The mismatch exceeds ``bound``.
    """
    bound = DEFAULT_REBUILD_TOL if bound is None else float(bound)
    err = rebuild_error(y_rebuilt, y_stored, rtol, atol)
    stats.adjoint_rebuild_error = max(stats.adjoint_rebuild_error, err)
    if err > bound:
        size = float(torch.linalg.vector_norm(y_rebuilt.reshape(y_stored.shape) - y_stored)
                     / torch.linalg.vector_norm(y_stored).clamp_min(torch.finfo(y_stored.dtype).tiny))
        raise AdjointRebuildError(
            f"{AdjointRebuildError.status.value} At t={t_at:.6g} the state rebuilt backwards is "
            f"{err:.3g} x the tolerance away from the stored forward state (relative error "
            f"{size:.3g}; bound rebuild_tol={bound:g}).", t=t_at)
