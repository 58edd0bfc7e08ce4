"""Random padded per-sample time grids shared by the per-sample-grid tests."""
import torch

F64 = torch.float64


def random_grid(B, T, seed=0, pad_row=1, pad_from=3, span=4.0):
    """``t`` of shape [B, T] (a random start, then sorted uniform times up to ``span`` later;
    row ``pad_row`` padded by repeating its time ``pad_from - 1``) and ``y0`` of shape [B, 2]."""
    g = torch.Generator().manual_seed(seed)
    t0 = torch.rand(B, 1, generator=g, dtype=F64)
    t = t0 + torch.sort(torch.rand(B, T, generator=g, dtype=F64) * span, dim=1).values
    t[:, 0] = t0[:, 0]
    if pad_row is not None:
        t[pad_row, pad_from:] = t[pad_row, pad_from - 1]
    return t, torch.randn(B, 2, generator=g, dtype=F64)


def lengths_of(t):
    """Each row's number of distinct times (its length before padding)."""
    return (1 + (t[:, 1:] != t[:, :-1]).sum(dim=1)).tolist()
