"""No false "`y0` contains NaN or inf" for a finite ``y0``: zero tolerances are refused
by name, ``atol=0`` with a zero component works, half-precision states get their own
message (or are controlled in float32 at tolerances they can hold), and a custom norm
that returns NaN is named."""

from __future__ import annotations

import math

import pytest
import torch

import solvers

F64 = torch.float64
T = torch.linspace(0, 1, 3, dtype=F64)


def rot(t, y):
    return torch.stack([y[1], -y[0]])


def exact(dtype):
    return torch.tensor([math.cos(1.0), -math.sin(1.0)], dtype=dtype)


def test_zero_rtol_and_atol_refused_by_name():
    with pytest.raises(ValueError, match=r"`rtol` and `atol` are both 0.*atol=1e-9"):
        solvers.odeint(rot, torch.tensor([1.0, 0.0], dtype=F64), T, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="both 0 \\(for some component\\)"):
        solvers.odeint(rot, torch.tensor([1.0, 0.0], dtype=F64), T, rtol=0.0, atol=torch.tensor([1e-9, 0.0], dtype=F64))
    # fixed-step methods ignore tolerances: nothing to refuse
    solvers.odeint(rot, torch.tensor([1.0, 0.0], dtype=F64), T, rtol=0.0, atol=0.0, method="rk4", options={"step_size": 0.1})


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_atol_zero_with_a_zero_component(dtype):
    sol = solvers.solve(rot, torch.tensor([1.0, 0.0], dtype=dtype), T, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(sol.ys[-1], exact(dtype), rtol=0, atol=1e-5)
    # per-sample grid too
    y0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=dtype)
    ys = solvers.odeint(lambda t, y: torch.stack([y[:, 1], -y[:, 0]], dim=1), y0, torch.stack([T, T]), rtol=1e-6, atol=0.0)
    torch.testing.assert_close(ys[-1, 0], exact(dtype), rtol=0, atol=1e-5)
    assert bool((ys[:, 1] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_default_tolerances_get_their_own_message(dtype):
    with pytest.raises(ValueError, match=rf"a {dtype} state resolves .*rtol.*atol.*float32"):
        solvers.odeint(rot, torch.tensor([1.0, 0.0], dtype=dtype), T)


def test_half_precision_at_tolerances_it_can_hold():
    ys = solvers.odeint(rot, torch.tensor([1.0, 0.0], dtype=torch.float16), T, rtol=1e-2, atol=1e-3)
    assert ys.dtype == torch.float16
    torch.testing.assert_close(ys[-1].float(), exact(torch.float32), rtol=0, atol=5e-3)


def test_norm_returning_nan_is_named():
    with pytest.raises(ValueError, match="custom `norm` option must return a finite"):
        solvers.odeint(rot, torch.tensor([1.0, 0.0], dtype=F64), T, options={"norm": lambda x: torch.tensor(math.nan)})
    with pytest.raises(ValueError, match="`y0` contains NaN"):  # a real NaN is still reported as such
        solvers.odeint(rot, torch.tensor([math.nan, 0.0], dtype=F64), T)


def test_dtype_option_has_torchdiffeq_meaning_or_is_refused():
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float32)
    ref = solvers.odeint(rot, y0, T)
    torch.testing.assert_close(solvers.odeint(rot, y0, T, options={"dtype": torch.float64}), ref, rtol=0, atol=0)
    with pytest.raises(TypeError, match="option `dtype`.*real floating torch.dtype"):
        solvers.odeint(rot, y0, T, options={"dtype": "garbage"})
    with pytest.raises(ValueError, match="option `dtype`=torch.float32 .*always controls"):
        solvers.odeint(rot, y0, T, options={"dtype": torch.float32})
    # a float64 state promotes any dtype to float64 (torchdiffeq's promote_types): accepted
    solvers.odeint(rot, y0.double(), T, options={"dtype": torch.float32})
