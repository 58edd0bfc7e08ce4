"""``torch.compile(fullgraph=True)`` of fixed-step solves: no graph break, and compiled equals eager.

``fullgraph=True`` raises on the first graph break, so a passing compile is the zero-break
assertion; ``torch._dynamo.explain`` counts them as a second witness. The fast tests trace
with ``backend="eager"`` (dynamo's capture, which is where graph breaks happen, without
inductor's code generation) in float64, where compiled and eager agree to rounding; the
slow ones compile with inductor (float32, agreement to float32 rounding).

Covered: a shared grid given as Python floats with ``step_size`` (what ``ODEBlock`` passes),
a shared tensor grid stepped on its own intervals (forward and backward in time), a
per-sample ``[B, T]`` grid on its rows' own intervals (padding, reverse), and an rk4
``ODEBlock`` forward and backward.
"""

from __future__ import annotations

import pytest
import torch

import odenet
import solvers

F64 = torch.float64


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _net(dtype=F64):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(dtype)


def _cases(dtype=F64):
    net = _net(dtype)

    def f(t, y):  # time-dependent, so a wrong stage time shows; t is 0-dim or [B]
        s = torch.sin(t).to(y.dtype)
        return net(y) + (s[:, None] if s.ndim else s)

    tb = torch.tensor([[0.0, 0.3, 0.7, 1.0], [0.2, 0.5, 0.5, 0.5], [-0.4, 0.1, 0.6, 0.9]], dtype=F64)  # row 1 padded
    return {
        "shared_floats_step_size": lambda y0: solvers.odeint(f, y0, [0.0, 0.35, 1.0], method="rk4", options=dict(step_size=0.1)),
        "shared_tensor_backwards": lambda y0: solvers.odeint(f, y0, torch.linspace(1.0, 0.0, 6, dtype=F64), method="euler"),
        "per_sample_rows": lambda y0: solvers.odeint(f, y0, tb, method="rk4"),
        "per_sample_rows_reverse": lambda y0: solvers.solve(f, y0, -tb, method="midpoint").ys,
    }


def test_smoke_per_sample_rows_fullgraph():
    """The default run's one compile test (tracing costs seconds; the rest are marked slow)."""
    net = _net()
    t = torch.tensor([[0.0, 0.3, 0.7], [0.2, 0.5, 0.5]], dtype=F64)
    fn = lambda y0: solvers.odeint(lambda s, y: net(y) * torch.cos(s)[:, None], y0, t, method="rk4")  # noqa: E731
    y0 = torch.randn(2, 2, dtype=F64)
    torch.testing.assert_close(torch.compile(fn, backend="eager", fullgraph=True)(y0), fn(y0), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_cases()))
def test_fullgraph_equals_eager(name):
    fn = _cases()[name]
    y0 = torch.randn(3, 2, dtype=F64)
    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    out = compiled(y0)
    torch.testing.assert_close(out, fn(y0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(compiled(2 * y0), fn(2 * y0), rtol=1e-12, atol=1e-12)  # the same graph, new values


@pytest.mark.slow
def test_explain_counts_no_break_and_the_fallback_still_runs():
    cases = _cases()
    y0 = torch.randn(3, 2, dtype=F64)
    ex = torch._dynamo.explain(cases["per_sample_rows"])(y0)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0)
    # a tensor t with step_size: the number of steps is a value of t, read on the host (a
    # graph break, not an error), and the answer is still right
    net = _net()
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def fn(y):
        return solvers.odeint(lambda s, x: net(x), y, t, method="rk4", options=dict(step_size=0.1))

    with pytest.raises(torch._dynamo.exc.Unsupported, match="tolist"):
        torch.compile(fn, backend="eager", fullgraph=True)(y0)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(fn, backend="eager")(y0), fn(y0), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_ode_block_rk4_forward_and_backward():
    torch.manual_seed(0)
    block = odenet.ODEBlock(odenet.fields.MLPField(2, 8), method="rk4", steps=5).double()
    x = torch.randn(4, 2, dtype=F64)
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    out = compiled(x)
    ref = block(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(out.square().sum(), list(block.parameters()))
    g_ref = torch.autograd.grad(ref.square().sum(), list(block.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert block.nfe_forward == 20  # the stats of the traced solve reach the block


def test_max_num_steps_holds_while_tracing():
    """The step count is a shape while tracing, so max_num_steps is still enforced (no host
    read); raising leaves the graph (dynamo does not trace the exception's constructor)."""
    fn = lambda y0: solvers.odeint(lambda t, y: -y, y0, torch.linspace(0, 1, 6, dtype=F64), method="euler", options=dict(max_num_steps=4))  # noqa: E731
    with pytest.raises(solvers.MaxStepsError, match="max_num_steps=4"):
        torch.compile(fn, backend="eager")(torch.ones(2, dtype=F64))


def test_eager_still_checks_what_tracing_skips():
    """The checks skipped while tracing stay in eager (the same call, uncompiled)."""
    y0 = torch.randn(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="NaN or inf"):
        solvers.odeint(lambda t, y: -y, y0, torch.tensor([0.0, float("nan")], dtype=F64), method="euler")
    with pytest.raises(ValueError, match="strictly monotonic"):
        solvers.odeint(lambda t, y: -y, y0, torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 2.0]], dtype=F64), method="euler")
    with pytest.raises(solvers.NonFiniteStateError):
        solvers.odeint(lambda t, y: y * y, 1e200 * torch.ones(2, 2, dtype=F64), [0.0, 1.0], method="euler", options=dict(step_size=0.5))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["block", "per_sample_rows"])
def test_inductor_fullgraph_equals_eager(name):
    """Real compilation (inductor), float32: tens of seconds of compile time on a CPU."""
    torch.manual_seed(0)
    if name == "block":
        fn = odenet.ODEBlock(odenet.fields.MLPField(2, 16), method="rk4", steps=10)
    else:
        fn = _cases(torch.float32)[name]
    y0 = torch.randn(3, 2)
    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(y0), fn(y0), rtol=1e-5, atol=1e-6)
