"""A custom adjoint norm written for torchdiffeq works unchanged: it receives one tuple
``(adj_t, y, adj_y, *adj_params)`` (tuple states: their parts), and the backward solve
takes the same number of evaluations as torchdiffeq's."""

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


def backward_evals(lib, f, y0, norm):
    t = torch.linspace(0, 2, 4, dtype=F64)
    ys = lib.odeint_adjoint(f, y0, t, rtol=1e-5, atol=1e-7, adjoint_options=dict(norm=norm))
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
    n_ref = backward_evals(torchdiffeq, f, y0, norm)
    ref_calls, calls[:] = list(calls), []
    g_ref, y0.grad = y0.grad.clone(), None
    n = backward_evals(solvers, f, y0, norm)
    assert n == n_ref
    assert calls[-1] == ref_calls[-1]  # same shapes in the same places
    torch.testing.assert_close(y0.grad, g_ref, rtol=1e-6, atol=1e-8)


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
