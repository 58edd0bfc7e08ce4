"""odenet's time-conditioned fields take a 0-dim time and a per-sample ``[B]`` time alike
(the ``[B]`` form is what a solve on a per-sample grid ``t`` ``[B, T]`` passes): row ``b``
with time ``t[b]`` equals the field evaluated on that row alone at the scalar ``t[b]``
(float64, agreement to 1e-12)."""

from __future__ import annotations

import pytest
import torch

import solvers
from odenet.fields._standard import ConvField, MLPField, _time_like
from odenet.fields._parabolic import ParabolicConvField, ParabolicMLPField

F64 = torch.float64


def rowwise(field, t, x):
    return torch.cat([field(t[b], x[b : b + 1]) for b in range(x.shape[0])])


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: MLPField(3, hidden=8, time="concat"), (4, 3)),
        (lambda: ConvField(2, hidden=4, time="concat"), (4, 2, 5, 5)),
        (lambda: ParabolicMLPField(3, hidden=8, time="concat"), (4, 3)),
        (lambda: ParabolicConvField(2, hidden=4, time="concat"), (4, 2, 5, 5)),
        (lambda: MLPField(3, hidden=8, time="film"), (4, 3)),
        (lambda: ConvField(2, hidden=4, time="film"), (4, 2, 5, 5)),
    ],
)
def test_per_sample_time_equals_rowwise_scalar_time(make, shape):
    torch.manual_seed(0)
    field = make().double()
    for p in field.parameters():  # time weights start at zero in some fields: make them count
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(*shape, dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.5, 3.0], dtype=F64)
    out = field(t, x)
    torch.testing.assert_close(out, rowwise(field, t, x), rtol=0, atol=1e-12)
    assert not torch.allclose(out, field(torch.tensor(0.0, dtype=F64), x))  # t matters


def test_time_like_shapes_and_errors():
    x = torch.zeros(4, 3, 2)
    assert _time_like(0.5, x).shape == ()
    assert _time_like(torch.tensor([0.5]), x).shape == ()
    assert _time_like(torch.arange(4.0, dtype=F64), x).shape == (4, 1, 1)
    assert _time_like(torch.arange(4.0, dtype=F64), x).dtype == x.dtype
    with pytest.raises(ValueError, match="one time per sample"):
        _time_like(torch.arange(3.0), x)


def test_field_solves_on_a_per_sample_grid():
    """An MLPField with concat time on t [B, T] equals the same field solved row by row."""
    torch.manual_seed(1)
    field = MLPField(2, hidden=8, time="concat").double()
    t = torch.sort(torch.rand(3, 5, dtype=F64) * 2, dim=1).values
    y0 = torch.randn(3, 2, dtype=F64)
    ys = solvers.odeint(field, y0, t, method="dopri5", rtol=1e-9, atol=1e-9)
    for b in range(3):
        yb = solvers.odeint(field, y0[b : b + 1], t[b], method="dopri5", rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ys[:, b], yb[:, 0], rtol=0, atol=1e-10)
