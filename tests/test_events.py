"""Events: ``solve(..., events=...)``, ``odeint(..., event_fn=...)`` and ``odeint_event``.

Event times are checked against closed forms (a ball under gravity, exponential decay, the
harmonic oscillator's zeros), their gradients against the closed form and central finite
differences, and the per-sample results against separate solves.
"""

from __future__ import annotations

import math

import pytest
import torch

import solvers
from solvers._events import _NODES, lagrange

F64 = torch.float64
G, H = 9.8, 10.0


def ball(g):
    """Free fall of a batch or a single ball: y = (height, velocity) on the last dim."""
    return lambda t, y: torch.stack([y[..., 1], -g * torch.ones_like(y[..., 1])], dim=-1)


def t_hit(h, g, v0=0.0, r=0.0):
    """First time a ball thrown up at v0 from height h reaches height r."""
    return (v0 + math.sqrt(v0 * v0 + 2 * g * (h - r))) / g


# --------------------------------------------------------------------------- event times


def test_drop_time_closed_form():
    sol = solvers.solve(ball(G), torch.tensor([H, 0.0], dtype=F64), torch.tensor([0.0, 5.0], dtype=F64),
                        events=solvers.Event(lambda t, y: y[0]), rtol=1e-10, atol=1e-12)
    assert bool(sol.event_mask)
    assert abs(float(sol.event_t) - math.sqrt(2 * H / G)) < 1e-12
    assert abs(float(sol.event_y[0])) < 1e-10 and abs(float(sol.event_y[1]) + math.sqrt(2 * G * H)) < 1e-10
    assert sol.ts.tolist() == [0.0]  # the solve ended at the event: outputs after it are dropped
    assert sol.stats.n_event_evals > sol.stats.n_accepted  # one per step, plus root location


@pytest.mark.parametrize("method,options", [("dopri5", None), ("tsit5", None), ("rk4", dict(step_size=0.1)), ("trapezoid", dict(step_size=0.1)),
                                            pytest.param("kvaerno5", None, marks=pytest.mark.slow)])
def test_bounces_closed_form(method, options):
    """The n-th impact of a ball that loses a fraction a of its speed at each bounce."""
    a, n = 0.2, 4 if method != "kvaerno5" else 2
    e = 1 - a
    t1 = math.sqrt(2 * H / G)
    exact = [t1 + sum(2 * e**k * G * t1 / G for k in range(1, i)) for i in range(1, n + 1)]
    t0, y = 0.0, torch.tensor([H, 0.0], dtype=F64)
    rtol = 1e-10 if method != "kvaerno5" else 1e-7  # the implicit method's root finder is the slow part
    got = []
    for _ in range(n):  # falling crossings only: the ball leaving the ground does not re-fire
        sol = solvers.solve(ball(G), y, torch.tensor([t0, t0 + 10.0], dtype=F64), method=method, options=options,
                            events=solvers.Event(lambda t, y: y[0], direction=-1), rtol=rtol, atol=rtol * 1e-2)
        t0 = float(sol.event_t)
        got.append(t0)
        y = torch.stack([torch.zeros((), dtype=F64), -e * sol.event_y[1]])
    tol = 1e-9 if method != "kvaerno5" else 1e-6
    assert max(abs(g - x) for g, x in zip(got, exact)) < tol


def test_odeint_event_bounces_like_the_torchdiffeq_example():
    """bouncing_ball.py's logic: shift up by 1e-7 after each impact, reflect, restart."""
    a, n, r = 0.2, 3, 0.2
    e = 1 - a
    state, t0 = (torch.tensor([H], dtype=F64), torch.tensor([0.0], dtype=F64)), torch.tensor([0.0], dtype=F64)
    f = lambda t, s: (s[1], -G * torch.ones_like(s[1]))  # noqa: E731
    times = []
    for _ in range(n):
        t0, sol = solvers.odeint_event(f, state, t0, event_fn=lambda t, s: s[0] - r, rtol=1e-8, atol=1e-8)
        times.append(float(t0))
        state = (sol[0][-1] + 1e-7, -e * sol[1][-1])
    t1 = math.sqrt(2 * (H - r) / G)
    exact = [t1 + sum(2 * e**k * t1 for k in range(1, i)) for i in range(1, n + 1)]
    assert max(abs(g - x) for g, x in zip(times, exact)) < 1e-7  # the 1e-7 shifts move the impacts by ~1e-8


def test_odeint_event_fn_returns_torchdiffeq_layout():
    y0 = (torch.tensor([H], dtype=F64), torch.tensor([0.0], dtype=F64))
    f = lambda t, s: (s[1], -G * torch.ones_like(s[1]))  # noqa: E731
    event_t, sol = solvers.odeint(f, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=lambda t, s: s[0])
    assert isinstance(sol, tuple) and sol[0].shape == (2, 1) and event_t.ndim == 0
    assert abs(float(event_t) - math.sqrt(2 * H / G)) < 1e-9  # found in the second window [1, 3]
    assert torch.equal(sol[0][0], y0[0]) and abs(float(sol[0][1])) < 1e-8


def test_reverse_time_and_fixed_step():
    # y' = -y from y(0) = 1 backwards until y = 2: t = -ln 2
    t_e, sol = solvers.odeint_event(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor(0.0, dtype=F64),
                                    event_fn=lambda t, y: y - 2.0, reverse_time=True, rtol=1e-10, atol=1e-12)
    assert abs(float(t_e) + math.log(2)) < 1e-9 and abs(float(sol[-1]) - 2.0) < 1e-9
    t_e, _ = solvers.odeint(ball(G), torch.tensor([H, 0.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                            event_fn=lambda t, y: y[0], method="rk4", options=dict(step_size=0.05))
    assert abs(float(t_e) - math.sqrt(2 * H / G)) < 1e-12  # rk4 and Hermite are exact on a quadratic


# --------------------------------------------------------------------------- gradients


def _event_time(h, g, v0, r, t0, interface=None):
    f = lambda t, y: torch.stack([y[1], -g * torch.ones_like(y[1])])  # noqa: E731
    kw = {} if interface is None else dict(odeint_interface=interface, adjoint_params=(g,))
    t_e, _ = solvers.odeint_event(f, torch.stack([h, v0]), t0, event_fn=lambda t, y: y[0] - r, rtol=1e-10, atol=1e-12, **kw)
    return t_e


@pytest.mark.parametrize("interface", [None, solvers.odeint_adjoint], ids=["odeint", "odeint_adjoint"])
def test_event_time_gradients(interface):
    """d t_e / d(h, g, v0, r, t0): closed form and central differences."""
    vals = dict(h=H, g=G, v0=1.5, r=0.3, t0=0.25)
    xs = {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in vals.items()}
    t_e = _event_time(**xs, interface=interface)
    t_e.backward()
    h, g, v0, r = vals["h"], vals["g"], vals["v0"], vals["r"]
    s = math.sqrt(v0 * v0 + 2 * g * (h - r))
    exact = dict(h=1 / s, g=-(v0 + s) / g**2 + (h - r) / (g * s), v0=(1 + v0 / s) / g, r=-1 / s, t0=1.0)
    assert abs(float(t_e.detach()) - vals["t0"] - t_hit(h, g, v0, r)) < 1e-11
    for k, x in xs.items():
        eps = 1e-5
        hi = dict(vals, **{k: vals[k] + eps})
        lo = dict(vals, **{k: vals[k] - eps})
        fd = (float(_event_time(**{a: torch.tensor(b, dtype=F64) for a, b in hi.items()}))
              - float(_event_time(**{a: torch.tensor(b, dtype=F64) for a, b in lo.items()}))) / (2 * eps)
        assert abs(float(x.grad) - exact[k]) < 1e-8, k
        assert abs(float(x.grad) - fd) < 1e-6, k


def test_gradient_through_several_bounces():
    """The last impact time after three bounces, differentiated through odeint_event chains."""
    def last_impact(h, g):
        f = lambda t, y: torch.stack([y[1], -g * torch.ones_like(y[1])])  # noqa: E731
        y, t0 = torch.stack([h, torch.zeros((), dtype=F64)]), torch.zeros((), dtype=F64)
        for _ in range(3):
            t0, sol = solvers.odeint_event(f, y, t0, event_fn=lambda t, y: y[0], rtol=1e-10, atol=1e-12)
            y = torch.stack([sol[-1, 0] + 1e-9, -0.8 * sol[-1, 1]])
        return t0

    h, g = torch.tensor(H, dtype=F64, requires_grad=True), torch.tensor(G, dtype=F64, requires_grad=True)
    last_impact(h, g).backward()
    c = 1 + 2 * 0.8 + 2 * 0.64  # t_3 = c sqrt(2h/g)
    assert abs(float(h.grad) - c / math.sqrt(2 * H * G)) < 1e-7
    assert abs(float(g.grad) + c * math.sqrt(2 * H) / (2 * G**1.5)) < 1e-7


def test_solve_event_time_has_ift_gradients():
    hs = torch.tensor([1.0, 2.0, 5.0], dtype=F64, requires_grad=True)
    y0 = torch.stack([hs, torch.zeros(3, dtype=F64)], dim=1)
    sol = solvers.solve(ball(G), y0, torch.tensor([0.0, 3.0], dtype=F64), events=solvers.Event(lambda t, y: y[:, 0]), rtol=1e-10, atol=1e-12)
    sol.event_t.sum().backward()
    assert torch.allclose(hs.grad, 1 / torch.sqrt(2 * hs.detach() * G), atol=1e-9, rtol=0)


# --------------------------------------------------------------------------- per-sample events


def test_batched_events_match_separate_solves():
    k = torch.tensor([0.5, 1.0, 2.0, 0.05], dtype=F64)
    f = lambda t, y: -k[:, None] * y  # noqa: E731
    y0 = torch.ones(4, 1, dtype=F64)
    t = torch.linspace(0.0, 4.0, 9, dtype=F64)
    sol = solvers.solve(f, y0, t, events=solvers.Event(lambda t, y: y[:, 0] - 0.5), rtol=1e-10, atol=1e-12)
    exact = math.log(2) / k
    fired = exact < 4.0
    assert sol.event_mask.tolist() == fired.tolist()
    assert torch.allclose(sol.event_t[fired], exact[fired], atol=1e-9, rtol=0)
    assert math.isnan(float(sol.event_t[3]))  # never fired
    for b in range(3):
        one = solvers.solve(lambda t, y, kb=k[b]: -kb * y, y0[b], t, events=solvers.Event(lambda t, y: y[0] - 0.5), rtol=1e-10, atol=1e-12)
        assert abs(float(one.event_t) - float(sol.event_t[b])) < 1e-9
    # a stopped sample keeps its event state; the others go on
    assert sol.ts.shape[0] == 9
    assert torch.allclose(sol.ys[-1, :3, 0], torch.full((3,), 0.5, dtype=F64), atol=1e-9)
    assert abs(float(sol.ys[-1, 3, 0]) - math.exp(-0.05 * 4)) < 1e-9


def test_all_samples_terminal_ends_the_solve():
    hs = torch.tensor([1.0, 2.0], dtype=F64)
    y0 = torch.stack([hs, torch.zeros(2, dtype=F64)], dim=1)
    t = torch.linspace(0.0, 2.0, 21, dtype=F64)
    sol = solvers.solve(ball(G), y0, t, events=lambda t, y: y[:, 0], rtol=1e-10, atol=1e-12)
    last = math.sqrt(2 * 2.0 / G)
    assert float(sol.ts[-1]) <= last < float(sol.ts[-1]) + 0.1 + 1e-12


@pytest.mark.parametrize("direction,expected", [(0, [1, 3, 5, 7]), (1, [3, 7]), (-1, [1, 5])])
def test_direction_and_all_crossings(direction, expected):
    """cos(t + phase) crosses zero at odd multiples of pi/2 (falling at 1, 5; rising at 3, 7)."""
    phase = torch.tensor([0.0, 0.3], dtype=F64)
    y0 = torch.stack([torch.cos(phase), -torch.sin(phase)], dim=1)
    f = lambda t, y: torch.stack([y[:, 1], -y[:, 0]], dim=1)  # noqa: E731
    ev = solvers.Event(lambda t, y: y[:, 0], terminal=False, direction=direction)
    sol = solvers.solve(f, y0, torch.tensor([0.0, 12.0], dtype=F64), events=ev, rtol=1e-8, atol=1e-10)
    assert sol.event_t.shape == (2, len(expected)) and bool(sol.event_mask.all())
    for b in range(2):
        exact = torch.tensor([m * math.pi / 2 - float(phase[b]) for m in expected], dtype=F64)
        assert torch.allclose(sol.event_t[b], exact, atol=2e-8, rtol=0)
    assert float(sol.ts[-1]) == 12.0  # non-terminal events do not stop the solve


def test_unbatched_non_terminal_and_padding():
    f = lambda t, y: torch.stack([y[1], -y[0]])  # noqa: E731
    ev = solvers.Event(lambda t, y: y[0], terminal=False)
    sol = solvers.solve(f, torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 5.0], dtype=F64), events=ev, rtol=1e-9, atol=1e-11)
    assert torch.allclose(sol.event_t, torch.tensor([math.pi / 2, 3 * math.pi / 2], dtype=F64), atol=1e-8, rtol=0)
    assert sol.event_y.shape == (2, 2)
    # per sample: the shorter row is padded with NaN and masked
    y0 = torch.tensor([[1.0, 0.0], [math.cos(1.0), -math.sin(1.0)]], dtype=F64)  # cos t, cos(t + 1)
    fb = lambda t, y: torch.stack([y[:, 1], -y[:, 0]], dim=1)  # noqa: E731
    sol = solvers.solve(fb, y0, torch.tensor([0.0, 4.0], dtype=F64), events=solvers.Event(lambda t, y: y[:, 0], terminal=False), rtol=1e-10, atol=1e-12)
    assert sol.event_mask.tolist() == [[True, False], [True, True]]
    assert math.isnan(float(sol.event_t[0, 1]))
    assert torch.allclose(sol.event_t[1], torch.tensor([math.pi / 2 - 1, 3 * math.pi / 2 - 1], dtype=F64), atol=1e-8, rtol=0)


def test_solve_backwards_in_time():
    """y' = -y from y(0) = 1 towards t = -3, per sample until y = 2 or y = 4: t = -ln 2, -ln 4."""
    level = torch.tensor([2.0, 4.0, 100.0], dtype=F64)
    t = torch.linspace(0.0, -3.0, 7, dtype=F64)
    sol = solvers.solve(lambda t, y: -y, torch.ones(3, 1, dtype=F64), t, events=solvers.Event(lambda t, y: y[:, 0] - level, direction=1),
                        rtol=1e-10, atol=1e-12, dense=True)
    assert sol.event_mask.tolist() == [True, True, False]
    assert torch.allclose(sol.event_t[:2], -torch.log(level[:2]), atol=1e-9, rtol=0)
    assert torch.allclose(sol.ys[-1, :, 0], torch.tensor([2.0, 4.0, math.exp(3.0)], dtype=F64), atol=1e-8, rtol=0)  # frozen, frozen, free
    assert torch.allclose(sol.evaluate(-1.0)[:, 0], torch.tensor([2.0, math.e, math.e], dtype=F64), atol=1e-8, rtol=0)


def test_float32_state():
    hs = torch.tensor([1.0, 2.0])
    y0 = torch.stack([hs, torch.zeros(2)], dim=1)  # float32 state, float64 time
    sol = solvers.solve(ball(G), y0, torch.tensor([0.0, 1.0], dtype=F64), events=lambda t, y: y[:, 0], rtol=1e-6, atol=1e-6)
    assert sol.event_y.dtype == torch.float32
    assert torch.allclose(sol.event_t, torch.sqrt(2 * hs.double() / G), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- the interpolant


@pytest.mark.parametrize("name", sorted(n for n, c in solvers.METHODS.items() if getattr(c, "integrate", None) is None))
def test_lagrange_form_reproduces_every_interpolant(name):
    """The 8-node Lagrange form the root finder uses equals the method's own interpolant."""
    method = solvers.METHODS[name]()
    f = lambda t, y: torch.stack([y[..., 1], -y[..., 0] + 0.3 * torch.sin(t) * y[..., 1]], dim=-1)  # noqa: E731
    y0 = torch.tensor([[1.0, 0.2], [0.3, -0.5]], dtype=F64)
    h = 0.3
    ts = [torch.tensor(c * h, dtype=F64) for c in method.stage_c]
    res = method.step(f, ts, y0, h, f(ts[0], y0))
    get_f1 = lambda: f(torch.tensor(h, dtype=F64), res.y1)  # noqa: E731
    Y = method.interpolate(res, torch.tensor(_NODES, dtype=F64), get_f1)
    th = torch.tensor([0.137, 0.61], dtype=F64)
    direct = method.interpolate(res, th, get_f1)  # (2, B, 2)
    assert torch.allclose(lagrange(Y, th), torch.stack([direct[0, 0], direct[1, 1]]), atol=1e-13, rtol=0)
    assert torch.allclose(lagrange(Y, th[0]), direct[0], atol=1e-13, rtol=0)


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_by_name():
    f = ball(G)
    y0, t = torch.tensor([H, 0.0], dtype=F64), torch.tensor([0.0, 2.0], dtype=F64)
    with pytest.raises(ValueError, match="direction"):
        solvers.Event(lambda t, y: y[0], direction=2)
    with pytest.raises(TypeError, match="callable"):
        solvers.solve(f, y0, t, events=3)
    with pytest.raises(ValueError, match="0-dim tensor"):
        solvers.solve(f, y0, t, events=lambda t, y: y[None])
    with pytest.raises(ValueError, match="gradient='direct'"):
        solvers.solve(f, y0, t, events=lambda t, y: y[0], gradient="adjoint")
    with pytest.raises(ValueError, match="own loop"):
        solvers.solve(f, y0, t, events=lambda t, y: y[0], method="explicit_adams")
    with pytest.raises(ValueError, match=r"per-sample `t`"):
        solvers.solve(ball(G), torch.zeros(2, 2, dtype=F64), torch.tensor([[0.0, 1.0], [0.0, 2.0]], dtype=F64), events=lambda t, y: y[:, 0])
    with pytest.raises(ValueError, match="require grad"):
        solvers.solve(f, y0, t.clone().requires_grad_(True), events=lambda t, y: y[0])
    with pytest.raises(ValueError, match="length 2"):
        solvers.odeint(f, y0, torch.tensor([0.0, 1.0, 2.0], dtype=F64), event_fn=lambda t, y: y[0])
    with pytest.raises(ValueError, match="step_size"):
        solvers.odeint(f, y0, t, event_fn=lambda t, y: y[0], method="rk4")
    with pytest.raises(ValueError, match="NaN or inf"):
        solvers.solve(f, y0, t, events=lambda t, y: y[0] / (t - t))
    with pytest.raises(solvers.MaxStepsError, match="did not happen"):
        solvers.odeint(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                       event_fn=lambda t, y: y + 1.0, options=dict(max_num_steps=50))
