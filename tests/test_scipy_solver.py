"""``method="scipy_solver"``: scipy.integrate.solve_ivp behind the torchdiffeq door."""

import warnings

import pytest
import torch
import torchdiffeq

import solvers

D = torch.float64
A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=D)
Y0 = torch.tensor([[1.0, 0.5], [0.2, -0.3]], dtype=D)
T = torch.linspace(0.0, 2.0, 7, dtype=D)


def field(t, y):
    return (1 + t) * (y @ A.T.to(y.dtype))


def exact(t):
    return torch.stack([Y0 @ torch.linalg.matrix_exp((s + s * s / 2) * A).T for s in t.tolist()])


@pytest.mark.parametrize("solver", ["RK45", "DOP853", "Radau", "BDF", "LSODA"])
def test_against_closed_form(solver):
    ys = solvers.odeint(field, Y0, T, method="scipy_solver", rtol=1e-10, atol=1e-12, options=dict(solver=solver))
    assert ys.shape == (7, 2, 2) and ys.dtype == D
    # scipy's own global error at rtol=1e-10 (BDF/LSODA are the least accurate: ~1e-8)
    assert float((ys - exact(T)).abs().max()) < 3e-8


@pytest.mark.parametrize("solver", ["RK45", "Radau"])
@pytest.mark.parametrize("flip", [False, True])
def test_same_as_torchdiffeq(solver, flip):
    t = T.flip(0) if flip else T
    ours = solvers.odeint(field, Y0, t, method="scipy_solver", options=dict(solver=solver))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchdiffeq passes min_step to every scipy solver
        ref = torchdiffeq.odeint(field, Y0, t, method="scipy_solver", options=dict(solver=solver))
    assert torch.allclose(ours, ref, rtol=0, atol=1e-13)


def test_dtype_tuple_state_and_stats():
    ys = solvers.odeint(field, Y0.float(), T.float(), method="scipy_solver", options=dict(solver="RK45"))
    assert ys.dtype == torch.float32
    a, b = solvers.odeint(lambda t, y: (y[1], -y[0]), (torch.ones(1, dtype=D), torch.zeros(1, dtype=D)), T,
                          method="scipy_solver", rtol=1e-10, atol=1e-12, options=dict(solver="DOP853"))
    assert torch.allclose(a[:, 0], torch.cos(T), atol=1e-9) and torch.allclose(b[:, 0], -torch.sin(T), atol=1e-9)
    sol = solvers.solve(field, Y0, T, method="scipy_solver", options=dict(solver="Radau"))
    assert sol.success and sol.stats.n_steps > 0 and sol.stats.n_f_evals > sol.stats.n_steps


def test_gradients_refused_and_adjoint_works():
    with pytest.raises(ValueError, match="cannot propagate gradients"):
        solvers.odeint(field, Y0.clone().requires_grad_(), T, method="scipy_solver")
    with pytest.raises(ValueError, match="runs its own loop"):
        solvers.solve(field, Y0, T, method="scipy_solver", gradient="checkpoint")
    # the continuous adjoint only needs forward and backward solves: it works (as in torchdiffeq)
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 2).double()

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, t, y):
            return torch.tanh(self.lin(y))

    m = F()
    solvers.odeint_adjoint(m, Y0, T, method="scipy_solver", rtol=1e-10, atol=1e-12, options=dict(solver="DOP853")).sum().backward()
    g = lin.weight.grad.clone()
    lin.weight.grad = None
    solvers.odeint(m, Y0, T, method="dopri5", rtol=1e-10, atol=1e-12).sum().backward()
    assert torch.allclose(g, lin.weight.grad, rtol=1e-7, atol=1e-9)


def test_bad_options_and_failure():
    with pytest.raises(ValueError, match="`solver`"):
        solvers.odeint(field, Y0, T, method="scipy_solver", options=dict(solver="rk4"))
    with pytest.raises(ValueError, match="min_step"):
        solvers.odeint(field, Y0, T, method="scipy_solver", options=dict(solver="RK45", min_step=1e-3))
    # y' = y^2, y(0) = 1 blows up at t = 1: scipy stops, the status says so, outputs stop before 1
    t = torch.tensor([0.0, 0.5, 0.9, 2.0], dtype=D)
    sol = solvers.solve(lambda t, y: y * y, torch.ones(1, dtype=D), t, method="scipy_solver",
                        options=dict(solver="RK45"), raise_on_failure=False)
    assert sol.status is solvers.Status.STEP_SIZE_UNDERFLOW and sol.ys.shape[0] == 3
    assert torch.allclose(sol.ys[:, 0], 1 / (1 - t[:3]), rtol=1e-5)
    with pytest.raises(solvers.StepSizeUnderflowError):
        solvers.odeint(lambda t, y: y * y, torch.ones(1, dtype=D), t, method="scipy_solver",
                       options=dict(solver="RK45"))
