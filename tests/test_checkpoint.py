"""gradient="checkpoint": the exact discrete gradient, equal to direct backprop to 1e-12
(adaptive implicit pairs with rejected steps: to the solve tolerance)."""

import pytest
import torch

import solvers



pytestmark = pytest.mark.usefixtures("float64_default")

# one-step methods: gradient="checkpoint" replays single steps (own-loop methods refuse it)
EXPLICIT = sorted(n for n, c in solvers.METHODS.items() if not c.implicit and not issubclass(c, solvers.AbstractOwnLoopSolver))


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _grads(net, gradient, t_list, method, options=None, gradient_options=None, **kw):
    """Gradients of a loss on two of the outputs w.r.t. y0, t and the net's parameters."""
    torch.manual_seed(1)
    y0 = torch.randn(3, 2, requires_grad=True)
    t = torch.tensor(t_list, requires_grad=True)

    def f(tt, y):  # a plain function: the net is captured, not passed
        return net(y) * torch.cos(tt)

    sol = solvers.solve(f, y0, t, method=method, options=options, gradient=gradient, gradient_options=gradient_options, rtol=1e-4, atol=1e-6, **kw)
    loss = (sol.ys[-1] ** 2).sum() + sol.ys[1].sum()
    return torch.autograd.grad(loss, [y0, t, *net.parameters()]), sol


def _rel(a, b):
    return max(float((x - y).norm() / max(x.norm(), 1e-300)) for x, y in zip(a, b))


def _options(name):
    return None if solvers.METHODS[name].adaptive else dict(step_size=0.1)


@pytest.mark.parametrize("t_list", [[0.0, 0.3, 1.0, 1.5], [1.5, 1.05, 0.31, 0.0]], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("name", EXPLICIT)
def test_equals_direct(name, t_list):
    net = _net()
    gd, sd = _grads(net, "direct", t_list, name, _options(name))
    gc, sc = _grads(net, "checkpoint", t_list, name, _options(name))
    assert _rel(gd, gc) <= 1e-12
    assert float((sd.ys - sc.ys).detach().abs().max()) <= 1e-13  # same steps; rounding-level differences only
    assert sc.stats.n_checkpoints >= 1
    assert sc.stats.n_f_evals_backward > 0 and sc.stats.n_steps_backward > 0


FIXED_IMPLICIT = sorted(n for n, c in solvers.METHODS.items() if c.implicit and not c.adaptive)
# the collocation methods (gl4, gl6, radauIIA3, radauIIA5) with Newton once raised torch's
# CheckpointError on backward: their coupled-stage Jacobian graph was built inside the
# segment's saved-tensor hooks (now kept private, as the one-stage equations' are)
FIXED_IMPLICIT_CASES = FIXED_IMPLICIT
_EQUALS_DIRECT_CASES = [(n, rf) for n in FIXED_IMPLICIT for rf in ("newton", "newton_krylov", "anderson")]


@pytest.mark.parametrize("t_list", [[0.0, 0.3, 1.0, 1.5], [1.5, 1.05, 0.31, 0.0]], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("name, root_finder", _EQUALS_DIRECT_CASES)
def test_fixed_step_implicit_equals_direct(name, t_list, root_finder):
    """Checkpointing replays the implicit stages exactly: the recomputed segment starts from the
    root-finder cache (Newton's Jacobian) its first run saw, so the gradient equals direct
    backprop to rounding and a second backward gives the same numbers (this crashed with a
    CheckpointError before the root finder's private graphs were kept out of the checkpoint)."""
    net = _net()
    opts = dict(step_size=0.1, root_finder=root_finder)
    gd, sd = _grads(net, "direct", t_list, name, opts)
    gc, sc = _grads(net, "checkpoint", t_list, name, opts, gradient_options={"checkpoints": 4})
    assert _rel(gd, gc) <= 1e-12  # measured 0 to 3e-16
    assert float((sd.ys - sc.ys).detach().abs().max()) <= 1e-13
    assert sc.stats.n_checkpoints == 4 and sc.stats.n_steps_backward == 15


@pytest.mark.parametrize("name", FIXED_IMPLICIT_CASES)
def test_fixed_step_implicit_replay_with_jacobian_refreshes(name):
    """A stiffer field and tight root tolerances make Newton refresh its Jacobian during the
    solve; the replay still repeats the forward exactly (equal to direct, and two backward
    passes give identical gradients), because each recomputed segment restarts from the cache
    its first run saw, not from the one the last segment left."""
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    torch.manual_seed(1)
    y0 = torch.randn(3, 2, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 1.0, 1.5])
    opts = dict(step_size=0.25, root_finder="newton", root_rtol=1e-12, root_atol=1e-12)
    inputs = [y0, *net.parameters()]

    def solve(gradient, **kw):
        return solvers.solve(lambda tt, y: net(y) * torch.cos(tt), y0, t, method=name, options=opts, gradient=gradient, **kw)

    sd = solve("direct")
    # the first Jacobian and at least one refresh, the refreshes this test is about (measured 2
    # for gl6 and radauIIA5, 3 to 5 for the others); without the replay's cache restore every
    # method here fails the checks below (two backward passes differ)
    assert sd.stats.n_jac_evals >= 2
    gd = torch.autograd.grad((sd.ys**2).sum(), inputs)
    sc = solve("checkpoint", gradient_options={"checkpoints": 3})
    loss = (sc.ys**2).sum()
    g1 = torch.autograd.grad(loss, inputs, retain_graph=True)
    g2 = torch.autograd.grad(loss, inputs)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert _rel(gd, g1) <= 1e-12  # measured 0 to 1e-16


@pytest.mark.parametrize("t_list", [[0.0, 0.3, 1.0, 1.5], [1.5, 1.05, 0.31, 0.0]], ids=["increasing", "decreasing"])
@pytest.mark.parametrize("root_finder", ["newton", "newton_krylov", "anderson"])
def test_adaptive_implicit_equals_direct(root_finder, t_list):
    """kvaerno5 takes no rejected step here, so the replay (which starts, like the direct
    solve, with no Newton Jacobian) repeats the direct solve exactly."""
    net = _net()
    gd, sd = _grads(net, "direct", t_list, "kvaerno5", dict(root_finder=root_finder))
    gc, sc = _grads(net, "checkpoint", t_list, "kvaerno5", dict(root_finder=root_finder))
    assert sd.stats.n_rejected == 0
    assert _rel(gd, gc) <= 1e-11  # measured 0 (Newton) to 3.4e-12 (Anderson)


@pytest.mark.parametrize("root_finder", ["newton", "newton_krylov", "anderson"])
def test_radau5_equals_direct(root_finder):
    """The adaptive collocation pair: no rejected step here, so the replay repeats the direct
    solve exactly (with Newton this raised a CheckpointError before the coupled-stage Jacobian
    graph was kept out of the checkpoint's hooks)."""
    net = _net()
    gd, sd = _grads(net, "direct", [0.0, 0.3, 1.0, 1.5], "radau5", dict(root_finder=root_finder))
    gc, sc = _grads(net, "checkpoint", [0.0, 0.3, 1.0, 1.5], "radau5", dict(root_finder=root_finder))
    assert sd.stats.n_rejected == 0
    assert _rel(gd, gc) <= 1e-11  # measured 0
    assert float((sd.ys - sc.ys).detach().abs().max()) <= 1e-13


def test_adaptive_implicit_with_rejections_agrees_to_tolerance():
    """With rejected steps (kvaerno3 here) the replay skips the rejected attempts that made
    Newton refresh its Jacobian, so it agrees with direct to the solve tolerance, not to
    rounding: rtol=1e-4, measured 5.6e-5 (gradients) and 2.5e-5 (states)."""
    net = _net()
    gd, sd = _grads(net, "direct", [0.0, 0.3, 1.0, 1.5], "kvaerno3", dict(root_finder="newton"))
    gc, sc = _grads(net, "checkpoint", [0.0, 0.3, 1.0, 1.5], "kvaerno3", dict(root_finder="newton"))
    assert sd.stats.n_rejected > 0
    assert _rel(gd, gc) <= 3e-4  # 5x the measured value
    assert float((sd.ys - sc.ys).detach().abs().max()) <= 1.5e-4


@pytest.mark.parametrize(
    "name, options",
    [
        ("rk4", dict(step_size=0.1, interp="cubic")),
        ("midpoint", dict(step_size=0.1, perturb=True)),
        ("euler", dict(grid_constructor=lambda f, y, t: torch.cat([t[0] + (t[-1] - t[0]) * torch.linspace(0, 1, 7)[:-1], t[-1:]]))),
        ("dopri5", dict(jump_t=[0.7], step_t=[0.2])),
        ("adaptive_heun", dict(jump_t=torch.tensor([0.5]))),  # non-FSAL: dense output caches f1
        ("bosh3", dict(max_step=0.05)),
    ],
)
def test_equals_direct_with_loop_options(name, options):
    net = _net()
    gd, _ = _grads(net, "direct", [0.0, 0.3, 1.0, 1.5], name, options)
    gc, _ = _grads(net, "checkpoint", [0.0, 0.3, 1.0, 1.5], name, options)
    assert _rel(gd, gc) <= 1e-12


@pytest.mark.parametrize("k", [1, 2, 7, 1000])
def test_number_of_checkpoints(k):
    net = _net()
    gd, _ = _grads(net, "direct", [0.0, 1.5], "rk4", dict(step_size=0.05))
    gc, sc = _grads(net, "checkpoint", [0.0, 1.5], "rk4", dict(step_size=0.05), gradient_options={"checkpoints": k})
    assert _rel(gd, gc) <= 1e-12
    assert sc.stats.n_checkpoints == min(k, 30)
    assert sc.stats.n_steps_backward == 30


def test_default_is_sqrt_of_steps():
    _, sc = _grads(_net(), "checkpoint", [0.0, 1.0], "euler", dict(step_size=0.01))
    assert sc.stats.n_checkpoints == 10


def test_tuple_state():
    torch.manual_seed(3)
    W = torch.randn(3, 3, requires_grad=True)

    def f(t, y):
        z = torch.cat([y[0], y[1]], dim=-1) @ W.T
        return torch.tanh(z[..., :1]), torch.sin(z[..., 1:]) * t

    a0 = torch.randn(4, 1, requires_grad=True)
    b0 = torch.randn(4, 2, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.2], requires_grad=True)
    out = []
    for mode in ("direct", "checkpoint"):
        a, b = solvers.solve(f, (a0, b0), t, method="tsit5", gradient=mode).ys
        out.append(torch.autograd.grad(a.sum() + (b[1] ** 2).sum(), [a0, b0, t, W]))
    assert _rel(*out) <= 1e-12


def test_memory_is_recomputed_not_stored():
    """The graph of a checkpointed solve holds K states, not the activations of every step."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    y0 = torch.randn(64, 2, requires_grad=True)
    t = torch.tensor([0.0, 1.0])

    def saved_bytes(mode):
        total = [0]

        def pack(x):
            total[0] += x.numel() * x.element_size()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            solvers.solve(lambda tt, y: net(y), y0, t, method="euler", options=dict(step_size=0.01), gradient=mode)
        return total[0]

    direct, ckpt = saved_bytes("direct"), saved_bytes("checkpoint")
    # direct saves >= 2 activations of 64x64 per step (100 steps); checkpointing keeps ~nothing outside segments
    assert direct >= 100 * 2 * 64 * 64 * 8
    assert ckpt < direct / 20


def test_no_grad_skips_the_replay():
    net = _net()
    y0 = torch.randn(3, 2)
    t = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        sc = solvers.solve(lambda tt, y: net(y), y0, t, gradient="checkpoint")
    sd = solvers.solve(lambda tt, y: net(y), y0, t)
    assert torch.equal(sc.ys, sd.ys.detach())
    assert sc.stats.n_f_evals == sd.stats.n_f_evals and sc.stats.n_checkpoints == 0


def test_failure_keeps_partial_gradients():
    net = _net()
    y0 = torch.randn(3, 2, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 3.0])
    sols = [solvers.solve(lambda tt, y: net(y), y0, t, method="dopri5", rtol=1e-10, atol=1e-10, options=dict(max_num_steps=8), gradient=m, raise_on_failure=False) for m in ("direct", "checkpoint")]
    assert all(s.status is solvers.Status.MAX_STEPS for s in sols)
    assert sols[0].ys.shape == sols[1].ys.shape and sols[1].ys.shape[0] == 2
    g = [torch.autograd.grad(s.ys.sum(), y0) for s in sols]
    assert _rel(*g) <= 1e-12


@pytest.mark.parametrize("bad, exc", [({"checkpoints": 0}, ValueError), ({"checkpoints": 2.5}, ValueError), ({"segments": 3}, ValueError)])
def test_bad_options(bad, exc):
    with pytest.raises(exc, match="checkpoint"):
        solvers.solve(lambda t, y: -y, torch.ones(2, requires_grad=True), torch.tensor([0.0, 1.0]), gradient="checkpoint", gradient_options=bad)


def test_direct_takes_no_gradient_options():
    with pytest.raises(ValueError, match="gradient_options"):
        solvers.solve(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), gradient_options={"checkpoints": 2})
