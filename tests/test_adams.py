"""Adams–Bashforth(–Moulton): coefficients, torchdiffeq parity, order, failure."""

import warnings
from fractions import Fraction

import pytest
import torch
import torchdiffeq

import solvers
from solvers._adams import bashforth, moulton

D = torch.float64
A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=D)
Y0 = torch.tensor([[1.0, 0.5], [-0.3, 0.2]], dtype=D)
T = torch.linspace(0.0, 2.0, 9, dtype=D)


def field(t, y):
    return (1 + t) * (y @ A.T)


def test_coefficients_closed_form_and_torchdiffeq_tables():
    assert bashforth(2) == [1.5, -0.5] and bashforth(4) == [55 / 24, -59 / 24, 37 / 24, -9 / 24]
    assert moulton(2) == [0.5, 0.5] and moulton(4) == [9 / 24, 19 / 24, -5 / 24, 1 / 24]
    from torchdiffeq._impl.fixed_adams import _BASHFORTH_DIVISOR, _MOULTON_DIVISOR

    for k in range(2, 13):  # torchdiffeq's order-1 Moulton entry (1/11) is never used
        assert max(abs(a - b) for a, b in zip(bashforth(k), _BASHFORTH_DIVISOR[k].tolist())) < 1e-14
        assert max(abs(a - b) for a, b in zip(moulton(k), _MOULTON_DIVISOR[k].tolist())) < 1e-14
        assert abs(sum(Fraction(c) for c in bashforth(k)) - 1) < 1e-13  # consistency (coefficients up to ~60 in size)


@pytest.mark.parametrize("name, opts", [
    ("fixed_adams", dict(step_size=0.05, max_order=4)),
    ("implicit_adams", dict(step_size=0.05, max_order=6)),
    ("explicit_adams", dict(step_size=0.05, max_order=4)),
    ("explicit_adams", dict(step_size=0.05)),  # AB11 is unstable here: both blow up alike
])
def test_same_as_torchdiffeq(name, opts):
    ours = solvers.odeint(field, Y0, T, method=name, options=opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torchdiffeq.odeint(field, Y0, T, method=name, options=opts)
    # explicit: the same arithmetic; implicit: torchdiffeq stops iterating at rtol=1e-7
    assert torch.allclose(ours, ref, rtol=1e-10 if name == "explicit_adams" else 1e-7, atol=1e-12)


def test_gradient_matches_expm_derivative():
    y0 = torch.tensor([1.0, 0.5], dtype=D, requires_grad=True)
    ys = solvers.odeint(lambda t, y: A @ y, y0, torch.tensor([0.0, 1.0], dtype=D), method="fixed_adams",
                        options=dict(step_size=0.01))
    J = torch.stack([torch.autograd.grad(ys[-1, i], y0, retain_graph=True)[0] for i in range(2)])
    assert torch.allclose(J, torch.linalg.matrix_exp(A), atol=1e-9, rtol=0)


def test_divergent_corrector_fails_and_checkpoint_is_refused():
    # h |m0| Lip = 0.1 * 0.27 * 100 > 1: functional iteration diverges on y' = -100 y
    t = torch.tensor([0.0, 0.15, 1.0], dtype=D)
    sol = solvers.solve(lambda t, y: -100 * y, torch.ones(1, dtype=D), t, method="fixed_adams",
                        options=dict(step_size=0.1), raise_on_failure=False)
    assert sol.status is solvers.Status.ROOT_FINDER and "diverged at step 2" in sol.message
    assert sol.ys.shape[0] == 2  # t = 0 and 0.15: the outputs before t = 0.2, where the failing step starts
    with pytest.raises(solvers.RootFinderError):
        solvers.odeint(lambda t, y: -100 * y, torch.ones(1, dtype=D), t, method="implicit_adams", options=dict(step_size=0.1))
    with pytest.raises(ValueError, match="runs its own loop"):
        solvers.solve(field, Y0.clone().requires_grad_(), T, method="fixed_adams", options=dict(step_size=0.1), gradient="checkpoint")


def test_bad_options():
    with pytest.raises(ValueError, match="max_order"):
        solvers.odeint(field, Y0, T, method="fixed_adams", options=dict(step_size=0.1, max_order=13))
    with pytest.raises(ValueError, match="unknown option"):
        solvers.odeint(field, Y0, T, method="explicit_adams", options=dict(step_size=0.1, implicit=True))
