"""What ODEBlock and LayerwiseField remember between forwards, and that it changes nothing.

ODEBlock keeps its solver options per configuration and its list of parametrised tensors
until a submodule is registered; LayerwiseField remembers the block of each time tensor.
Each is pinned here to the uncached answer: the hand-written ResNet, bit for bit, with
exact counters, across reconfiguration, in-place changes and copies.
"""

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from odenet import LayerwiseField, ODEBlock
from odenet._block import _parametrized


def _blocks(n, dim=4, seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, dim)) for _ in range(n)]


def _resnet(blocks, x, sub=1):
    for b in blocks:
        for _ in range(sub):
            x = x + b(x) / sub
    return x


def test_repeated_forwards_and_reconfiguration_stay_the_resnet_with_exact_stats():
    L = 5
    blocks = _blocks(L)
    block = ODEBlock(LayerwiseField(blocks, t1=L), method="euler", steps=L)
    x = torch.randn(3, 4, requires_grad=True)
    ref = _resnet(blocks, x)
    g_ref = torch.autograd.grad(ref.sum(), [x, *block.parameters()])
    for _ in range(3):  # the memo and the cached options serve the later forwards
        y = block(x)
        assert torch.equal(y, ref)
        assert block.nfe_forward == L and block.last_stats.n_steps == L
        for a, b in zip(torch.autograd.grad(y.sum(), [x, *block.parameters()]), g_ref):
            assert torch.equal(a, b)
    with block.using(steps=2 * L):  # another configuration: rebuilt options, 2 steps per block
        y2 = block(x)
        assert block.nfe_forward == 2 * L
    torch.testing.assert_close(y2, _resnet(blocks, x, sub=2), rtol=1e-6, atol=1e-6)
    assert torch.equal(block(x), ref) and block.nfe_forward == L  # restored
    block.configure(method="rk4")  # not a single solve any more: interval by interval
    block(x)
    assert block.nfe_forward == 4 * L and len(block._stats) == L


def test_layerwise_memo_follows_the_tensor_not_its_id():
    f = LayerwiseField(_blocks(4), t1=1.0)
    t = torch.tensor(0.3)
    assert f._block_of(t) == 1 and f._block_of(t) == 1  # the second from the memo
    t.fill_(0.8)  # in place: a new version, the memo misses
    assert f._block_of(t) == 3
    f.t1 = 2.0  # forgets everything
    assert f._memo == {} and f._block_of(t) == 1
    tg = torch.tensor(0.1, requires_grad=True)
    assert f._block_of(tg) == 0 and id(tg) not in f._memo  # never remembered
    with torch.inference_mode():
        ti = torch.tensor(1.9)
        assert f._block_of(ti) == 3 and id(ti) not in f._memo
    assert f._block_of(1.5) == 3  # floats still work
    with pytest.raises(ValueError, match="defined on"):
        f._block_of(torch.tensor(2.5))


def test_layerwise_function_agrees_with_the_module_and_survives_copies():
    blocks = _blocks(3)
    f = LayerwiseField(blocks, t1=3.0)
    fn = f.as_function()
    assert f.as_function() is fn  # made once while nothing it captured changed
    x = torch.randn(2, 4)
    ts = [torch.tensor(v) for v in (0.0, 0.999, 1.0, 2.5, 3.0)]
    for t in ts * 2:
        assert torch.equal(fn(t, x), f(t, x))
        assert torch.equal(fn(t, x), blocks[f.index(t)](x))
    g = copy.deepcopy(f)
    assert g._memo == {} and "_function" not in g.__dict__
    h = pickle.loads(pickle.dumps(f))
    assert h._memo == {} and h.t1 == 3.0
    for t in ts:
        assert torch.equal(g.as_function()(t, x), g.blocks[f.index(t)](x))
        assert torch.equal(h(t, x), h.blocks[f.index(t)](x))
    assert g.as_function()(ts[0], x).data_ptr() != fn(ts[0], x).data_ptr()


def test_parametrized_walk_matches_the_generic_walk():
    shared = nn.Linear(3, 3)
    m = nn.Sequential(nn.Linear(3, 3), nn.Sequential(shared, nn.Tanh(), shared), nn.ModuleList([nn.Linear(3, 3), shared]))
    parametrize.register_parametrization(m[0], "weight", nn.Identity())
    parametrize.register_parametrization(shared, "bias", nn.Identity())
    parametrize.register_parametrization(shared, "weight", nn.Identity())
    generic = [(mod, name) for mod in m.modules() if parametrize.is_parametrized(mod) for name in mod.parametrizations.keys()]
    assert _parametrized(m) == generic and len(generic) == 3


class _Counting(nn.Module):
    calls = 0

    def forward(self, w):
        _Counting.calls += 1
        return w


def test_a_parametrisation_added_after_the_first_forward_is_cached_per_forward():
    L = 4
    blocks = _blocks(L)
    block = ODEBlock(LayerwiseField(blocks, t1=L), method="euler", steps=L)
    x = torch.randn(2, 4)
    y0 = block(x)
    assert block._params == []
    parametrize.register_parametrization(blocks[1][0], "weight", _Counting())
    _Counting.calls = 0
    y1 = block(x)
    assert _Counting.calls == 1  # computed once for the whole solve, not once per evaluation
    assert torch.equal(y0, y1)  # an identity parametrisation changes nothing
    parametrize.remove_parametrizations(blocks[1][0], "weight")
    assert torch.equal(block(x), y0)  # the stale entry reads the plain weight: harmless
