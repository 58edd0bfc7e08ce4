"""The vector field's ``t`` comes in the state's real dtype (torchdiffeq's contract), on
every path: fixed and adaptive, tuple states, per-sample grids, the adjoint's backward
pass. ``options={"time_dtype": torch.float64}`` keeps float64 time as an explicit choice.
Decreasing time never shows the loop's negated internal times to the user."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

import solvers

F32, F64 = torch.float32, torch.float64
A, B = 0.3, 0.1


def torchdiffeq_example(t, y):
    # returns float64 if ``t`` is float64 and the state float32: the reported failure
    return A + (y - (A * t + B)) ** 5


class Recorder(torch.nn.Module):
    """``dy/dt = -w y`` recording the dtype of every ``t`` it receives."""

    def __init__(self, tuple_state=False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))
        self.tuple_state = tuple_state
        self.seen = set()

    def forward(self, t, y):
        self.seen.add(t.dtype)
        if self.tuple_state:
            return tuple(-self.w * v for v in y)
        return -self.w * y


@pytest.mark.parametrize("method, options", [("dopri5", None), ("tsit5", None), ("rk4", {"step_size": 0.05}), ("euler", None)])
def test_float32_state_gets_float32_time_like_torchdiffeq(method, options):
    y0 = torch.tensor([B], dtype=F32)
    t = torch.linspace(0, 1, 5, dtype=F64)
    ys = solvers.odeint(torchdiffeq_example, y0, t, method=method, options=options)
    assert ys.dtype == F32
    if method in ("dopri5", "rk4", "euler"):
        ref = torchdiffeq.odeint(torchdiffeq_example, y0, t, method=method, options=options)
        torch.testing.assert_close(ys, ref, rtol=1e-5, atol=1e-6)
    # the exact solution is y = a t + b
    torch.testing.assert_close(ys[:, 0], (A * t + B).to(F32), rtol=1e-5, atol=2e-6)


def test_time_dtype_option_gives_float64_time_and_is_validated():
    f = Recorder()
    y0 = torch.tensor([1.0], dtype=F32)
    t = torch.linspace(0, 1, 3, dtype=F64)
    solvers.solve(f, y0, t)
    assert f.seen == {F32}
    f.seen.clear()
    solvers.solve(f, y0, t, options={"time_dtype": F64})
    assert f.seen == {F64}
    with pytest.raises(TypeError, match="option `time_dtype`"):
        solvers.solve(f, y0, t, options={"time_dtype": "float64"})


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"step_size": 0.1})])
def test_tuple_state_and_adjoint_backward_get_state_dtype(method, options):
    f = Recorder(tuple_state=True)
    y0 = (torch.tensor([1.0], dtype=F32, requires_grad=True), torch.tensor([2.0, 3.0], dtype=F32))
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, requires_grad=True)
    ys = solvers.odeint_adjoint(f, y0, t, method=method, options=options)
    (ys[0].sum() + ys[1].sum()).backward()
    assert f.seen == {F32}
    # the gradients match the closed form y(t) = y0 exp(-w t)
    w = float(f.w.detach())
    expect = sum(torch.exp(torch.tensor(-w * s)) for s in (0.0, 0.5, 1.0))
    tol = 1e-5 if options is None else 1e-4
    assert abs(float(y0[0].grad) - float(expect)) < tol


def test_per_sample_grid_fixed_and_adaptive_and_adjoint():
    f = Recorder()
    y0 = torch.ones(3, 1, dtype=F32, requires_grad=True)
    t = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.2, 0.4], [0.0, 1.0, 2.0]], dtype=F64)
    for method in ("dopri5", "rk4"):
        ys = solvers.odeint(f, y0, t, method=method, options={"step_size": 0.05} if method == "rk4" else None)
        torch.testing.assert_close(ys[..., 0], torch.exp(-0.7 * t.T).to(F32), rtol=1e-5, atol=1e-6)
    solvers.odeint_adjoint(f, y0, t).sum().backward()
    assert f.seen == {F32}
    torch.testing.assert_close(y0.grad[:, 0], torch.exp(-0.7 * t).sum(dim=1).to(F32), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- decreasing time


def test_decreasing_list_t_returns_the_users_times():
    sol = solvers.solve(lambda t, y: -y, torch.tensor([1.0], dtype=F64), [1.0, 0.5, 0.0])
    assert sol.ts.tolist() == [1.0, 0.5, 0.0]
    torch.testing.assert_close(sol.ys[:, 0], torch.exp(torch.tensor([0.0, 0.5, 1.0], dtype=F64)), rtol=1e-6, atol=0)


def blowup_backwards(t, y):  # y = 1 / (1 + t): singular at t = -1 when run from 0 downwards
    return -(y**2)


def test_decreasing_time_messages_show_user_times():
    y0, t = torch.tensor([1.0], dtype=F64), torch.tensor([0.0, -2.0], dtype=F64)
    with pytest.raises(solvers.StepSizeUnderflowError, match=r"at t=-1\b") as e:
        solvers.solve(blowup_backwards, y0, t)
    assert "t=1" not in str(e.value)
    with pytest.raises(solvers.MaxStepsError, match=r"stopped at t=-0\.") as e:
        solvers.solve(blowup_backwards, y0, t, options={"max_num_steps": 10})
    assert -1 < e.value.t < 0
    with pytest.raises(solvers.NonFiniteStateError, match=r"initial time t=1 "):
        solvers.solve(lambda t, y: y / (t - 1), y0, torch.tensor([1.0, -2.0], dtype=F64))


def test_decreasing_per_sample_grid_message():
    y0 = torch.ones(2, 1, dtype=F64)
    t = torch.tensor([[0.0, -0.5], [0.0, -2.0]], dtype=F64)
    with pytest.raises(solvers.MaxStepsError, match=r"stopped at t=-0\.") as e:
        solvers.solve(blowup_backwards, y0, t, options={"max_num_steps": 10})
    assert e.value.t < 0


class Flip(torch.nn.Module):
    """A field that turns non-finite when ``broken`` (set between forward and backward)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))
        self.broken = False

    def forward(self, t, y):
        return self.w * y * (float("nan") if self.broken else 1.0)


@pytest.mark.parametrize("mode", ["rebuild", "checkpointed"])
def test_adjoint_failure_raised_inside_backward_keeps_its_wording(mode):
    f = Flip()
    ys = solvers.odeint_adjoint(f, torch.tensor([1.0], dtype=F64, requires_grad=True), torch.tensor([1.0, 0.0], dtype=F64), adjoint_mode=mode)
    f.broken = True
    with pytest.raises(solvers.NonFiniteStateError, match=r"backward \(.*adjoint\) pass") as e:
        ys.sum().backward()
    assert "t=-" not in str(e.value)


def test_float32_adjoint_at_default_tolerances_is_not_refused_by_the_rebuild_check():
    # torchdiffeq's latent_ode example: a float32 state at the default rtol=1e-7, below
    # float32's resolution; the rebuilt-state check is floored at eps * max|y|
    torch.manual_seed(0)
    func = torch.nn.Sequential(torch.nn.Linear(4, 20), torch.nn.ELU(), torch.nn.Linear(20, 20), torch.nn.ELU(), torch.nn.Linear(20, 4))
    field = lambda t, z: func(z)
    z0 = torch.randn(64, 4, requires_grad=True)
    t = torch.linspace(0, 1.9, 50)
    ys = solvers.odeint_adjoint(field, z0, t, adjoint_params=tuple(func.parameters()))
    (ys**2).sum().backward()
    g_adj, z0.grad = z0.grad.clone(), None
    (solvers.odeint(field, z0, t) ** 2).sum().backward()
    torch.testing.assert_close(g_adj, z0.grad, rtol=1e-3, atol=1e-3)  # float32 adjoint vs backprop


def test_rebuild_error_is_floored_at_the_working_precision():
    from solvers._adjoint_rebuild import rebuild_error

    y = torch.tensor([3.0, 1e-3, -2.0], dtype=F32)
    off = y.clone()
    off[1] += 2 * torch.finfo(F32).eps  # rounding of the O(1) components, landing on a small one
    # in units of atol + rtol|y| (1e-9 + 1e-7 * 1e-3) this is ~220 "tolerances", beyond the
    # default rebuild_tol=100; floored at eps * max|y| it is below one
    assert rebuild_error(off, y, 1e-7, 1e-9) <= 1.0
    # float64 keeps the plain tolerance scale (its eps is far below any tolerance)
    y64, off64 = y.double(), off.double()
    assert rebuild_error(off64, y64, 1e-7, 1e-9) > 200
