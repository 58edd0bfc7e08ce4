"""A custom adjoint norm written for torchdiffeq works unchanged: it receives one tuple
``(adj_t, y, adj_y, *adj_params)`` (tuple states: their parts), and the backward solve of
one output interval takes the same number of evaluations as torchdiffeq's. Over several
output intervals the backward solve carries its step size from one interval to the next
(torchdiffeq starts each afresh), so it takes fewer."""

from __future__ import annotations

import torch
import torchdiffeq

import solvers

F64 = torch.float64


class Field(torch.nn.Module):
    def __init__(self, tuple_state=False):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
        self.tuple_state = tuple_state
        self.n = 0

    def forward(self, t, y):
        self.n += 1
        if self.tuple_state:
            u, v = y
            out = self.net(torch.cat([u, v], dim=-1))
            return out[..., :1], out[..., 1:]
        return self.net(y)


def rms(x):
    return x.pow(2).mean().sqrt()


def backward_evals(lib, f, y0, norm, n_out=2):
    t = torch.linspace(0, 2, n_out, dtype=F64)
    ys = lib.odeint_adjoint(f, y0, t, rtol=1e-5, atol=1e-7, adjoint_options=None if norm is None else dict(norm=norm))
    loss = sum(v.sum() for v in ys) if isinstance(ys, tuple) else ys.sum()
    f.n = 0
    loss.backward()
    return f.n


def test_torchdiffeq_adjoint_norm_gets_its_arguments_and_same_step_counts():
    calls = []

    def norm(tt):  # torchdiffeq's contract: one tuple (adj_t, y, adj_y, *adj_params)
        adj_t, y, adj_y, *adj_params = tt
        calls.append((adj_t.shape, y.shape, adj_y.shape, [p.shape for p in adj_params]))
        return torch.maximum(rms(y), rms(adj_y))

    f = Field()
    y0 = torch.tensor([[1.0, 0.5]], dtype=F64, requires_grad=True)
    for n_out in (2, 4):  # one output interval: the same evaluations; three: fewer (the step size is carried)
        calls[:] = []
        y0.grad = None
        n_ref = backward_evals(torchdiffeq, f, y0, norm, n_out)
        ref_calls, calls[:] = list(calls), []
        g_ref, y0.grad = y0.grad.clone(), None
        n = backward_evals(solvers, f, y0, norm, n_out)
        assert n == n_ref if n_out == 2 else n < n_ref
        assert calls[-1] == ref_calls[-1]  # same shapes in the same places
        torch.testing.assert_close(y0.grad, g_ref, rtol=1e-5, atol=1e-7)


def test_torchdiffeq_adjoint_norm_on_a_tuple_state():
    shapes = []

    def norm(tt):  # (adj_t, u, v, adj_u, adj_v, *adj_params)
        shapes.append(tuple(x.shape for x in tt[:5]))
        return max(rms(tt[1]), rms(tt[2]), rms(tt[3]), rms(tt[4]))

    f = Field(tuple_state=True)
    y0 = (torch.tensor([[1.0]], dtype=F64, requires_grad=True), torch.tensor([[0.5]], dtype=F64))
    n_ref = backward_evals(torchdiffeq, f, y0, norm)
    ref_shapes, shapes[:] = list(shapes), []
    n = backward_evals(solvers, f, y0, norm)
    assert n == n_ref
    assert shapes[-1] == ref_shapes[-1] == ((), (1, 1), (1, 1), (1, 1), (1, 1))


def test_seminorm_string_matches_torchdiffeq_counts():
    f = Field()
    y0 = torch.tensor([[1.0, 0.5]], dtype=F64, requires_grad=True)
    assert backward_evals(solvers, f, y0, "seminorm") == backward_evals(torchdiffeq, f, y0, "seminorm")


def test_backward_carries_the_step_size_across_output_intervals():
    """Five output intervals: no initial-step estimate and no restart from a small step per
    interval, so fewer backward evaluations than torchdiffeq, and the gradient still
    matches direct backpropagation through a float64 solve at 1e-10 to the tolerance."""
    f = Field()
    y0 = torch.tensor([[1.0, 0.5]], dtype=F64, requires_grad=True)
    n_ref = backward_evals(torchdiffeq, f, y0, None, n_out=6)
    y0.grad = None
    n = backward_evals(solvers, f, y0, None, n_out=6)
    assert n < n_ref
    g = y0.grad.clone()
    y0.grad = None
    t = torch.linspace(0, 2, 6, dtype=F64)
    solvers.odeint(f, y0, t, rtol=1e-10, atol=1e-10).sum().backward()
    torch.testing.assert_close(g, y0.grad, rtol=1e-5, atol=1e-7)
