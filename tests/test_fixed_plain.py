"""The fixed loop's plain path (solvers._integrate._fixed_plain) against the general loop.

The plain path runs explicit Runge–Kutta methods when every output time is a grid time,
nothing is tracked with respect to ``t`` and nothing runs per accepted step. It must give
the same bits, the same gradients and the same counters as the general loop, which a
method instance with ``plain_step = False`` forces.
"""

import pytest
import torch

import solvers
from solvers import _integrate


def _mlp(dim=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, dim)).double()


def _general(name):
    m = solvers.METHODS[name]()
    m.plain_step = False  # the loop reads it from the instance: forces _fixed_loop
    return m


def _solve_both(name, f, net, y0, t, options):
    out = []
    for method in (solvers.METHODS[name](), _general(name)):
        y = y0.detach().clone().requires_grad_(True)
        sol = solvers.solve(f, y, t, method=method, options=dict(options))
        ys = sol.ys
        params = [y, *net.parameters()]
        grads = torch.autograd.grad((ys * torch.linspace(-1, 1, ys.numel(), dtype=ys.dtype).reshape(ys.shape)).sum(), params)
        out.append((ys.detach(), grads, sol.stats))
    return out


@pytest.mark.parametrize("name, stages", [("euler", 1), ("midpoint", 2), ("heun3", 3), ("rk4", 4)])
@pytest.mark.parametrize("grid", ["step_size", "t_is_grid", "step_size_one"])
def test_plain_path_equals_general_loop(name, stages, grid):
    net = _mlp()
    f = lambda t, y: net(y) * (1 + t)  # time-dependent: the stage times matter
    y0 = torch.randn(5, 3, dtype=torch.float64)
    if grid == "t_is_grid":  # outputs at every grid time
        t, options, n = torch.linspace(0.0, 1.0, 7, dtype=torch.float64), {}, 6
    elif grid == "step_size":
        t, options, n = torch.tensor([0.0, 1.0], dtype=torch.float64), {"step_size": 0.125}, 8
    else:  # h == 1: Euler's plain add
        t, options, n = torch.tensor([0.0, 4.0], dtype=torch.float64), {"step_size": 1.0}, 4
    called = []
    real = _integrate._fixed_plain
    _integrate._fixed_plain = lambda *a, **k: called.append(1) or real(*a, **k)
    try:
        (ys_p, g_p, st_p), (ys_g, g_g, st_g) = _solve_both(name, f, net, y0, t, options)
    finally:
        _integrate._fixed_plain = real
    assert called == [1]  # the first solve took the plain path, the forced one did not
    assert torch.equal(ys_p, ys_g)
    for a, b in zip(g_p, g_g):
        assert torch.equal(a, b)
    for st in (st_p, st_g):
        assert (st.n_f_evals, st.n_steps, st.n_accepted, st.n_rejected) == (n * stages, n, n, 0)


def test_plain_euler_equals_hand_loop_bit_for_bit():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    y0 = torch.randn(6, 4)
    for h, steps in ((1.0, 5), (0.1, 10)):
        ys = solvers.solve(lambda t, y: net(y), y0, torch.tensor([0.0, h * steps], dtype=torch.float64),
                           method="euler", options={"step_size": h}).ys
        y = y0
        for _ in range(steps):
            y = torch.add(y, net(y), alpha=h)
        assert torch.equal(ys[-1], y)


@pytest.mark.parametrize("case", ["reverse", "tuple", "complex"])
def test_plain_path_other_states_equal_general_loop(case):
    field = _mlp(2)
    if case == "reverse":
        f, y0, t = (lambda t, y: field(y) * t), torch.randn(4, 2, dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    elif case == "tuple":
        f = lambda t, s: (field(s[0]) + s[1], -s[0])
        y0, t = (torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)), torch.tensor([0.0, 1.0], dtype=torch.float64)
    else:
        f, y0, t = (lambda t, y: 1j * y), torch.randn(3, dtype=torch.complex128), torch.tensor([0.0, 1.0], dtype=torch.float64)
    for name in ("euler", "rk4"):
        a = solvers.solve(f, y0, t, method=name, options={"step_size": 0.25})
        b = solvers.solve(f, y0, t, method=_general(name), options={"step_size": 0.25})
        for u, v in zip(a.ys if case == "tuple" else [a.ys], b.ys if case == "tuple" else [b.ys]):
            assert torch.equal(u, v)
        assert a.stats.n_f_evals == b.stats.n_f_evals == 4 * (1 if name == "euler" else 4)


def test_plain_path_checks_every_output_shape_and_counts_each_call():
    calls = []

    def f(t, y):
        calls.append(1)
        return -y if len(calls) < 3 else (-y)[:1]  # the third call returns a broadcastable (1, 2)

    with pytest.raises(ValueError, match=r"returned shape \(1, 2\) for a state of shape \(4, 2\)"):
        solvers.solve(f, torch.ones(4, 2), torch.tensor([0.0, 1.0]), method="euler", options={"step_size": 0.2})
    assert len(calls) == 3

    def g(t, y):
        return -y

    sol = solvers.solve(g, torch.ones(4, 2), torch.tensor([0.0, 1.0]), method="euler", options={"step_size": 0.2})
    assert sol.stats.n_f_evals == 5 and sol.stats.n_steps == 5


def test_plain_path_keeps_the_nonfinite_check_and_the_record():
    with pytest.raises(solvers.NonFiniteStateError, match="non-finite"):
        solvers.solve(lambda t, y: y * float("inf"), torch.ones(3), torch.tensor([0.0, 1.0]), method="euler",
                      options={"step_size": 0.5})
    # a gradient mode that replays the discretisation reads cfg.record: checkpointing gives direct's gradient
    net = _mlp(2)
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grads = []
    for gradient in ("direct", "checkpoint"):
        y = solvers.solve(lambda t, y: net(y), y0, t, method="euler", options={"step_size": 0.1}, gradient=gradient).ys[-1]
        grads.append(torch.autograd.grad(y.sum(), [y0, *net.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_methods_overriding_step_lose_the_plain_facts():
    class Damped(solvers.METHODS["euler"]):
        def step(self, func, ts, y0, h, f0):
            res = super().step(func, ts, y0, h, f0)
            res.y1 = res.y1 * 0.5
            return res

    assert solvers.METHODS["euler"].plain_step and solvers.METHODS["euler"].single_stage_weight == 1.0
    assert not Damped.plain_step and Damped.single_stage_weight is None
    assert solvers.METHODS["rk4"].single_stage_weight is None
    assert not solvers.METHODS["dopri5"].plain_step and not solvers.METHODS["implicit_euler"].plain_step
    y = solvers.solve(lambda t, y: 0 * y, torch.ones(2), torch.tensor([0.0, 1.0]), method=Damped(), options={"step_size": 0.5}).ys[-1]
    assert torch.equal(y, torch.full((2,), 0.25))  # its own step ran, twice
