"""Option ``compile_step``: each adaptive explicit RK step as one ``torch.compile``'d function.

The fast tests trace with ``backend="eager"`` (dynamo's capture, where graph breaks and
guards live, without inductor's code generation) in float64, where the compiled step
sums in the same order as the eager one: solutions, step counts and gradients agree to
rounding. The slow ones compile with inductor in float32.
"""

from __future__ import annotations

import pytest
import torch

import solvers

F64 = torch.float64
EAGER = dict(compile_step="eager")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class TimeField(torch.nn.Module):
    """``net(y) + sin(3 t)``: time-dependent, so a wrong stage time shows; ``t`` 0-dim or ``[B]``."""

    def __init__(self, dtype=F64):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(dtype)

    def forward(self, t, y):
        s = torch.sin(3 * t).to(y.dtype)
        return 2.0 * self.net(y) + (s[:, None] if s.ndim else s)


def _both(f, y0, t, method="dopri5", tol=1e-8, **options):
    eager = solvers.solve(f, y0, t, method=method, rtol=tol, atol=tol, options=dict(options))
    comp = solvers.solve(f, y0, t, method=method, rtol=tol, atol=tol, options=dict(options, **EAGER))
    return eager, comp


def _same_counts(a, b):
    for k in ("n_f_evals", "n_steps", "n_accepted", "n_rejected"):
        assert getattr(a.stats, k) == getattr(b.stats, k), k


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "fehlberg2"])
def test_shared_grid_equals_the_eager_step(method):
    """Outputs inside steps (dense output from the returned stages), FSAL and non-FSAL pairs."""
    f = TimeField()
    y0 = torch.randn(5, 2, dtype=F64)
    t = torch.linspace(0.0, 2.0, 9, dtype=F64)
    eager, comp = _both(f, y0, t, method)
    torch.testing.assert_close(comp.ys, eager.ys, rtol=1e-12, atol=1e-12)
    _same_counts(comp, eager)
    assert comp.stats.n_rejected > 0 or comp.stats.n_steps > 3  # a solve with real control


def test_per_sample_grid_equals_the_eager_step():
    f = TimeField()
    y0 = torch.randn(3, 2, dtype=F64)
    t = torch.tensor([[0.0, 0.4, 1.1, 2.0], [0.3, 0.5, 0.5, 0.5], [-1.0, -0.2, 0.7, 1.5]], dtype=F64)  # row 1 padded
    eager, comp = _both(f, y0, t)
    torch.testing.assert_close(comp.ys, eager.ys, rtol=1e-12, atol=1e-12)
    _same_counts(comp, eager)
    assert torch.equal(comp.stats.sample_f_evals, eager.stats.sample_f_evals)
    assert torch.equal(comp.stats.sample_rejected, eager.stats.sample_rejected)


def test_decreasing_time_tuple_state_and_a_user_norm():
    f = TimeField()

    def pair(t, s):  # a tuple state: (y, z) with dz/dt = |y|^2
        y, z = s
        return f(t, y), (y * y).sum(-1)

    y0 = (torch.randn(4, 2, dtype=F64), torch.zeros(4, dtype=F64))
    t = torch.tensor([1.0, 0.5, -0.5], dtype=F64)
    eager, comp = _both(pair, y0, t)
    for a, b in zip(comp.ys, eager.ys):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    _same_counts(comp, eager)
    inf_norm = lambda x: x.abs().max()  # noqa: E731  (applied by the loop to the step's error / scale)
    eager, comp = _both(f, y0[0], t, norm=inf_norm)
    torch.testing.assert_close(comp.ys, eager.ys, rtol=1e-12, atol=1e-12)
    _same_counts(comp, eager)


def test_direct_gradients_equal_the_eager_steps():
    f = TimeField()
    params = list(f.parameters())
    t = torch.tensor([[0.0, 0.5, 1.2], [0.2, 0.9, 1.0]], dtype=F64)
    grads = []
    for options in ({}, EAGER):
        y0 = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=F64, requires_grad=True)
        ys = solvers.odeint(f, y0, t, method="dopri5", rtol=1e-9, atol=1e-9, options=options)
        grads.append(torch.autograd.grad((ys ** 2).sum(), [y0, *params]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_adjoint_compiles_both_passes_and_equals_the_eager_adjoint():
    """The backward field by torch.func.vjp (traceable) on an nn.Module: same gradients and the
    same backward steps as the eager adjoint; a plain function's backward runs eager."""
    f = TimeField()
    params = tuple(f.parameters())
    y0 = torch.randn(3, 2, dtype=F64)
    t = torch.linspace(0.0, 1.0, 4, dtype=F64)
    out = {}
    for name, options, gopts in (("eager", {}, {}), ("compiled", EAGER, {}),
                                 ("seminorm eager", {}, dict(options=dict(norm="seminorm"))),
                                 ("seminorm compiled", EAGER, dict(options=dict(norm="seminorm"))),
                                 ("backward eager", EAGER, dict(options=dict(compile_step=False)))):
        sol = solvers.solve(f, y0, t, method="dopri5", rtol=1e-9, atol=1e-9, options=options, gradient="adjoint",
                            params=params, gradient_options=gopts)
        g = torch.autograd.grad(sol.ys.square().sum(), params)
        out[name] = (g, sol.stats.n_f_evals_backward, sol.stats.n_steps_backward)
    for a, b in (("compiled", "eager"), ("seminorm compiled", "seminorm eager"), ("backward eager", "eager")):
        for x, y in zip(out[a][0], out[b][0]):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
        assert out[a][1:] == out[b][1:], a
    assert out["seminorm eager"][1] < out["eager"][1]  # the norm reached the backward solve
    net = f.net
    g_fn = solvers.odeint_adjoint(lambda s, y: net(y) * torch.cos(s), y0, t, method="dopri5", options=dict(EAGER),
                                  adjoint_params=params)  # not a module: the eager backward field
    g_mod = solvers.odeint_adjoint(lambda s, y: net(y) * torch.cos(s), y0, t, method="dopri5", adjoint_params=params)
    torch.testing.assert_close(torch.autograd.grad(g_fn.sum(), params), torch.autograd.grad(g_mod.sum(), params))
    with pytest.raises(TypeError, match="adjoint option `compile_step`"):
        solvers.odeint_adjoint(f, y0, t, method="dopri5", adjoint_params=params, adjoint_options=dict(compile_step=3))


def test_bad_options_are_refused_by_name():
    f = TimeField()
    y0 = torch.randn(2, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="`compile_step` applies only to adaptive"):
        solvers.odeint(f, y0, t, method="rk4", options=dict(compile_step=True))
    with pytest.raises(ValueError, match="compile_step.*'kvaerno5' is not one"):
        solvers.odeint(f, y0, t, method="kvaerno5", options=dict(compile_step=True))
    with pytest.raises(ValueError, match="option `compile_step`: Invalid backend: 'nope'"):
        solvers.odeint(f, y0, t, method="dopri5", options=dict(compile_step="nope"))
    for bad in ("", 3, 1.0):
        with pytest.raises(TypeError, match="compile_step"):
            solvers.odeint(f, y0, t, method="dopri5", options=dict(compile_step=bad))


def test_a_field_that_breaks_the_graph_gets_a_named_error():
    def f(t, y):
        if y.sum() > 0:  # a branch on a value: a graph break under fullgraph
            return -y
        return y

    with pytest.raises(RuntimeError, match="option `compile_step`.*graph"):
        solvers.odeint(f, torch.ones(2, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="dopri5", options=dict(EAGER))


def test_non_finite_state_is_reported_as_by_the_eager_step():
    f = lambda t, y: y * y  # noqa: E731  blows up at t = 1
    y0 = torch.ones(2, 1, dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    with pytest.raises((solvers.NonFiniteStateError, solvers.StepSizeUnderflowError)) as eager:
        solvers.odeint(f, y0, t, method="dopri5")
    with pytest.raises(type(eager.value)):
        solvers.odeint(f, y0, t, method="dopri5", options=dict(EAGER))


@pytest.mark.slow
@pytest.mark.parametrize("grid", ["shared", "per_sample"])
def test_inductor_float32_within_the_tolerance(grid):
    """Real compilation (inductor, float32): fused kernels round differently, so an accept/reject
    decision at the threshold may move; the solutions agree to the solve's own error."""
    f = TimeField(torch.float32)
    for p in f.parameters():
        p.requires_grad_(False)
    y0 = torch.randn(64, 2)
    t = torch.linspace(0.0, 2.0, 6) if grid == "shared" else torch.sort(torch.rand(64, 6) * 2.0, dim=1).values
    ref = solvers.odeint(f.double(), y0.double(), t.double(), method="dopri5", rtol=1e-11, atol=1e-11)
    f.float()
    with torch.no_grad():
        sol = solvers.solve(f, y0, t, method="dopri5", rtol=1e-5, atol=1e-5, options=dict(compile_step=True))
        eager = solvers.solve(f, y0, t, method="dopri5", rtol=1e-5, atol=1e-5)
    err_c = float((sol.ys.double() - ref).abs().max())
    err_e = float((eager.ys.double() - ref).abs().max())
    assert err_c < 2 * err_e + 1e-6 and err_c < 1e-3
    assert abs(sol.stats.n_steps - eager.stats.n_steps) <= 1


@pytest.mark.parametrize("gradient", ["checkpoint", "checkpointed_adjoint"])
@pytest.mark.parametrize("grid", ["shared", "per_sample"])
def test_other_gradient_modes_run_the_compiled_steps(gradient, grid):
    f = TimeField()
    params = tuple(f.parameters())
    y0 = torch.randn(3, 2, dtype=F64)
    t = torch.linspace(0.0, 1.0, 4, dtype=F64) if grid == "shared" else torch.tensor(
        [[0.0, 0.4, 1.1], [0.3, 0.5, 0.5], [-1.0, -0.2, 0.7]], dtype=F64)
    grads = []
    for options in ({}, EAGER):
        sol = solvers.solve(f, y0, t, method="dopri5", rtol=1e-9, atol=1e-9, options=options, gradient=gradient, params=params)
        grads.append(torch.autograd.grad(sol.ys.square().sum(), params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_events_and_dense_output_use_the_compiled_steps_stages():
    f = TimeField()
    y0 = torch.tensor([[0.5, -0.3], [1.0, 0.2]], dtype=F64)
    t = torch.tensor([0.0, 3.0], dtype=F64)
    ev = solvers.Event(lambda s, y: y[..., 0] - 0.8, terminal=True)  # per sample
    sols = [solvers.solve(f, y0, t, method="dopri5", rtol=1e-9, atol=1e-9, options=o, events=ev, dense=True) for o in ({}, EAGER)]
    q = torch.linspace(0.0, 1.5, 7, dtype=F64)
    eager, comp = sols
    torch.testing.assert_close(comp.evaluate(q), eager.evaluate(q), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(comp.event_t, eager.event_t, rtol=1e-12, atol=1e-12, equal_nan=True)  # NaN: no event
    assert torch.isfinite(eager.event_t).any()  # an event was located
