"""A strongly dissipative gradient-flow field shared by the adjoint tests."""

import math

import torch


class GradientFlow(torch.nn.Module):
    """``f(y) = -K^T tanh(K y + b)``: a gradient flow, dissipative with |J| up to ~|K|^2."""

    def __init__(self, scale: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.K = torch.nn.Parameter(torch.randn(32, 8, dtype=torch.float64, generator=g) * scale / math.sqrt(8))
        self.b = torch.nn.Parameter(torch.randn(32, dtype=torch.float64, generator=g))

    def forward(self, t, y):
        return -torch.tanh(y @ self.K.T + self.b) @ self.K


def y0_batch(batch=4, seed=1):
    return torch.randn(batch, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
