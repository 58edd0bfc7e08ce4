"""ODEBlock's replay of a plain fixed-step solve (solvers._replay): the same bits as
``solvers.solve``, the same gradients, and the general path whenever anything changed."""

import copy
import pickle

import pytest
import torch
from torch import nn

import odenet
import solvers

from _checks import count_calls


class _TimeField(nn.Module):
    """A time-conditioned MLP field that records the times it is called with."""

    def __init__(self, d=5):
        super().__init__()
        self.lin = nn.Linear(d + 1, d)
        self.seen = []
        self.bad_shape = False

    def forward(self, t, x):
        self.seen.append(float(t))
        tt = t.to(x.dtype).expand(x.shape[0], 1)
        out = torch.tanh(self.lin(torch.cat([x, tt], dim=1)))
        return out[:, :-1] if self.bad_shape else out


def _block(steps=4, t1=1.0, method="euler"):
    torch.manual_seed(0)
    return odenet.ODEBlock(_TimeField(), method=method, steps=steps, t1=t1)


def _count_solves(monkeypatch):
    return count_calls(monkeypatch, solvers, "solve")


@pytest.mark.parametrize("steps,t1", [(4, 1.0), (3, 0.7), (1, 2.0)])
def test_replay_matches_solve_bitwise(monkeypatch, steps, t1):
    block = _block(steps, t1)
    calls = _count_solves(monkeypatch)
    x1, x2 = torch.randn(6, 5), torch.randn(6, 5)
    block(x1)
    assert len(calls) == 1 and block._replay is not None
    block.field.seen.clear()
    y = block(x2)
    assert len(calls) == 1, "the second forward must re-run the recorded loop, not solve again"
    seen = list(block.field.seen)
    block.field.seen.clear()
    ref = solvers.solve(block.field, x2, torch.tensor([0.0, t1], dtype=torch.float64), method="euler",
                        options={"step_size": t1 / steps}).ys[-1]
    assert torch.equal(y, ref)
    assert seen == block.field.seen  # the same times, in the same order
    assert block.nfe_forward == steps and block.last_stats.n_steps == steps and block.last_stats.n_accepted == steps


def test_replay_gradients_equal_general_path():
    block = _block()
    x = torch.randn(6, 5, requires_grad=True)
    block(torch.randn(6, 5))  # records the plan
    y = block(x)
    g = torch.autograd.grad(y.square().sum(), [x, *block.parameters()])
    fresh = copy.deepcopy(block)  # copies drop the record: its forward takes the general path
    assert fresh._replay is None
    x2 = x.detach().clone().requires_grad_(True)
    y2 = fresh(x2)
    g2 = torch.autograd.grad(y2.square().sum(), [x2, *fresh.parameters()])
    assert torch.equal(y, y2)
    for a, b in zip(g, g2):
        assert torch.equal(a, b)


def test_replay_float64_gradcheck():
    block = _block().double()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    block(x.detach())
    assert torch.autograd.gradcheck(block, (x,))


def test_layerwise_resnet_replay_is_the_hand_written_loop(monkeypatch):
    torch.manual_seed(1)
    blocks = [nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8)) for _ in range(3)]
    block = odenet.ODEBlock(odenet.LayerwiseField(blocks, t1=3), method="euler", steps=3)
    calls = _count_solves(monkeypatch)
    x = torch.randn(4, 8)
    block(torch.randn(4, 8))
    y = block(x)
    assert len(calls) == 1
    h = x
    for b in blocks:
        h = h + b(h)
    assert torch.equal(y, h)


def _layerwise_block(n=3, d=8):
    torch.manual_seed(1)
    blocks = [nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d)) for _ in range(n)]
    return odenet.ODEBlock(odenet.LayerwiseField(blocks, t1=n), method="euler", steps=n)


def _resnet(blocks, h):
    for b in blocks:
        h = h + b(h)
    return h


@pytest.mark.parametrize("change", ["replace", "append", "t1", "takes_time"])
def test_layerwise_replay_follows_changed_blocks(monkeypatch, change):
    """The replay calls a layerwise field's blocks directly; any change to which block a
    step selects (a replaced or added block, t1, the call signature) is seen."""
    block = _layerwise_block()
    field = block.field
    x = torch.randn(4, 8)
    block(torch.randn(4, 8))
    assert block._replay.calls is not None  # the direct-call record
    if change == "replace":
        field.blocks[1] = nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 8))
        want = _resnet(list(field.blocks), x)
    elif change == "append":
        field.blocks.append(nn.Linear(8, 8))
        field.t1 = 4.0
        block.configure(t1=4.0, steps=4)
        want = _resnet(list(field.blocks), x)
    elif change == "t1":
        field.t1 = 6.0  # each block now owns two units of time: the first 3 steps use blocks 0, 0, 1
        b = list(field.blocks)
        want = _resnet([b[0], b[0], b[1]], x)
    else:
        field.takes_time = [True, False, False]
        field.blocks[0] = _TimeBlock(field.blocks[0])
        want = _resnet([lambda h: field.blocks[0].inner(h) * 2.0, *list(field.blocks)[1:]], x)
    y = block(x)
    assert torch.equal(y, want)
    calls = _count_solves(monkeypatch)
    assert torch.equal(block(x), want)  # replayed again, now from the new record
    assert len(calls) == 0
    assert (block._replay.calls is None) == (change == "takes_time")


class _TimeBlock(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, t, x):
        return self.inner(x) * (2.0 + 0.0 * t)


def test_layerwise_replay_runs_block_hooks():
    block = _layerwise_block()
    seen = []
    block.field.blocks[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(4, 8)
    block(x)
    block(x)
    assert seen == [torch.Size([4, 8])] * 2


def _count_block_calls(monkeypatch):
    """Counts nn.Module.__call__ of Sequential blocks (the replay's direct calls skip it)."""
    calls = []
    real = nn.Module._wrapped_call_impl

    def counting(self, *a, **k):
        if type(self) is nn.Sequential:
            calls.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(nn.Module, "_wrapped_call_impl", counting)
    return calls


def test_layerwise_replay_calls_leaves_directly_with_the_same_bits(monkeypatch):
    block = _layerwise_block()
    x = torch.randn(4, 8)
    block(torch.randn(4, 8))
    module_calls = _count_block_calls(monkeypatch)
    with torch.no_grad():
        y = block(x)
    assert module_calls == [] and block._replay.direct.usable()
    xg = x.clone().requires_grad_(True)
    yg = block(xg)
    assert module_calls == []
    xr = x.clone().requires_grad_(True)
    want = _resnet(list(block.field.blocks), xr)
    assert torch.equal(y, want) and torch.equal(yg, want)
    g = torch.randn(4, 8)
    assert torch.equal(torch.autograd.grad(yg, xg, g)[0], torch.autograd.grad(want, xr, g)[0])


@pytest.mark.parametrize("change", ["child_hook", "sequential_pre_hook", "global_hook", "backward_hook",
                                    "replace_child", "delete_child", "compiled"])
def test_direct_calls_step_aside_when_module_call_would_differ(monkeypatch, change):
    """Hooks added after the record, a changed Sequential or module.compile(): the replay
    calls the blocks through nn.Module.__call__ again, with what that call does."""
    block = _layerwise_block()
    field, x = block.field, torch.randn(4, 8)
    block(torch.randn(4, 8))
    seq = field.blocks[1]
    handle, seen = None, []
    if change == "child_hook":
        handle = seq[2].register_forward_hook(lambda m, i, o: o * 0.5)
    elif change == "sequential_pre_hook":
        handle = seq.register_forward_pre_hook(lambda m, i: (i[0] * 2.0,))
    elif change == "global_hook":
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(type(m)))
    elif change == "backward_hook":
        handle = seq[0].register_full_backward_hook(lambda m, gi, go: seen.append("bwd"))
    elif change == "replace_child":
        seq[1] = nn.Sigmoid()
    elif change == "delete_child":
        del seq[1]
    else:
        seq.compile(backend="eager")
    try:
        assert not block._replay.direct.usable()
        xr = x.clone().requires_grad_(True)
        want = _resnet(list(field.blocks), xr)
        seen.clear()
        xg = x.clone().requires_grad_(True)
        y = block(xg)
        assert torch.equal(y, want)
        if change == "global_hook":
            assert nn.Sequential in seen and nn.Linear in seen
        y.sum().backward()
        if change == "backward_hook":
            assert seen == ["bwd"]
    finally:
        if handle is not None:
            handle.remove()
    if change in ("child_hook", "sequential_pre_hook", "global_hook", "backward_hook"):
        assert block._replay.direct.usable()  # the hook removed: direct again


def test_direct_calls_keep_a_sequential_subclass_and_plain_modules_whole():
    class Scaled(nn.Sequential):
        def forward(self, x):
            return 3.0 * super().forward(x)

    torch.manual_seed(0)
    blocks = [Scaled(nn.Linear(4, 4), nn.Tanh()), nn.Linear(4, 4), nn.Sequential(nn.Sequential(nn.Linear(4, 4)))]
    block = odenet.ODEBlock(odenet.LayerwiseField(blocks, t1=3), method="euler", steps=3)
    x = torch.randn(2, 4)
    block(x)
    assert torch.equal(block(x), _resnet(blocks, x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_direct_calls_leave_script_modules_to_their_own_call():
    torch.manual_seed(0)
    blocks = [torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.Tanh())), nn.Sequential(nn.Linear(4, 4))]
    block = odenet.ODEBlock(odenet.LayerwiseField(blocks, t1=2), method="euler", steps=2)
    x = torch.randn(2, 4)
    block(x)
    assert block._replay.calls is not None and block._replay.direct is None
    assert torch.equal(block(x), _resnet(blocks, x))


@pytest.mark.parametrize("change", ["shape", "dtype", "configure", "field"])
def test_anything_changed_takes_the_general_path(monkeypatch, change):
    block = _block()
    calls = _count_solves(monkeypatch)
    x = torch.randn(6, 5)
    block(x)
    if change == "shape":
        x = torch.randn(7, 5)
    elif change == "dtype":
        block.double()
        x = x.double()
    elif change == "configure":
        block.configure(steps=8)
    else:
        block.field = _TimeField()
    n = len(calls)  # (configure() validates its options with a probe solve)
    y = block(x)
    assert len(calls) == n + 1
    assert block.nfe_forward == (8 if change == "configure" else 4)
    block(x)  # and the new solve is replayed in turn
    assert len(calls) == n + 1
    assert torch.equal(block(x), y)


def test_not_replayed_for_other_methods_or_modes(monkeypatch):
    calls = _count_solves(monkeypatch)
    for method, gradient in [("rk4", "direct"), ("euler", "checkpoint"), ("dopri5", "direct")]:
        torch.manual_seed(0)
        block = odenet.ODEBlock(_TimeField(), method=method, gradient=gradient,
                                steps=None if method == "dopri5" else 4)
        before = len(calls)
        x = torch.randn(6, 5)
        block(x)
        block(x)
        assert len(calls) - before == 2, (method, gradient)
        assert block._replay is None


def test_inference_mode_records_nothing_then_autograd_works():
    block = _block()
    x = torch.randn(6, 5)
    with torch.inference_mode():
        block(x)
    assert block._replay is None  # its stage times would be inference tensors
    xr = x.clone().requires_grad_(True)
    block(xr)
    y = block(xr)  # replayed
    y.sum().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all()
    with torch.inference_mode():  # a recorded plan may run in inference mode
        assert torch.equal(block(x), y.detach())


def test_replay_checks_the_fields_output_shape():
    block = _block()
    block(torch.randn(6, 5))
    block.field.bad_shape = True
    with pytest.raises(ValueError, match="returned shape"):
        block(torch.randn(6, 5))


def test_replay_still_refuses_a_non_finite_state():
    block = _block()
    block(torch.randn(6, 5))
    with torch.no_grad():
        block.field.lin.bias.fill_(float("nan"))
    with pytest.raises(solvers.NonFiniteStateError):
        block(torch.randn(6, 5))


def test_pickled_block_has_no_record_and_runs():
    block = _block()
    x = torch.randn(6, 5)
    y = block(x)
    clone = pickle.loads(pickle.dumps(block))
    assert clone._replay is None
    assert torch.equal(clone(x), y)
