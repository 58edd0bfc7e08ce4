"""Block calls without ``nn.Module.__call__``, for the ODEBlock's replayed Euler loop.

``module(x)`` runs ``module.forward(x)`` through ``_wrapped_call_impl`` and ``_call_impl``,
which check for hooks, a ``module.compile()`` and JIT tracing before calling ``forward``.
For a ResNet block ``nn.Sequential(Linear, Tanh, Linear)`` that is four such calls per
step, and on a small MLP they cost more than the ODE layer's whole bookkeeping: in
``bench_block``'s harness a loop calling the leaves' ``forward`` was 8 % faster than the
hand-written ``h = h + block(h)``.

:class:`DirectCalls` calls a step's block as ``forward`` of its leaves (one level into an
exact ``nn.Sequential``) whenever ``module(x)`` would do exactly that: no forward or
backward hooks on the modules or globally, no compiled call, no JIT tracing, and the
``Sequential`` still holds the children it held when the plan was made. :meth:`usable` checks
this before every replayed forward; otherwise the caller uses the plain block calls. The
operations, their order and so the bits are those of ``block(x)``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn.modules import module as _module

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = tuple(getattr(_module, name, None) for name in (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
    "_global_backward_pre_hooks"))
#: this torch's nn.Module has the attributes the checks read (else: never call directly)
SUPPORTED = (all(isinstance(d, dict) for d in _GLOBAL_HOOKS)
             and all(isinstance(getattr(nn.Identity(), a, None), dict) for a in _HOOK_DICTS))


def _checkable(m) -> bool:
    return (isinstance(m, nn.Module) and not isinstance(m, torch.jit.ScriptModule)
            and all(isinstance(m.__dict__.get(a), dict) for a in _HOOK_DICTS))


def _sequential_call(children: tuple):
    def call(x):
        for m in children:
            x = m.forward(x)
        return x
    return call


def _module_call(m: nn.Module):
    return lambda x: m.forward(x)


class DirectCalls:
    """Direct calls for the blocks of a step sequence (``blocks[i]`` is step ``i``'s)."""

    __slots__ = ("calls", "_modules", "_sequentials")

    def __init__(self, blocks: Sequence[nn.Module]):
        plans, self._modules, self._sequentials = {}, [], []
        for b in dict.fromkeys(blocks):  # distinct blocks, in order
            if type(b) is nn.Sequential and None not in b._modules.values():
                children = tuple(b._modules.values())
                self._sequentials.append((b, children))
                self._modules += [b, *children]
                plans[b] = _sequential_call(children)
            else:
                self._modules.append(b)
                plans[b] = _module_call(b)
        self.calls = tuple(plans[b] for b in blocks)

    @classmethod
    def make(cls, blocks: Optional[Sequence[nn.Module]]) -> Optional["DirectCalls"]:
        """The plan for ``blocks``, or None where some module is not a plain ``nn.Module``
        whose hooks this check can see (a ScriptModule, say)."""
        if blocks is None or not SUPPORTED or not all(isinstance(b, nn.Module) for b in blocks):
            return None
        plan = cls(blocks)
        if not all(_checkable(m) for m in plan._modules):
            return None
        return plan

    def usable(self) -> bool:
        """Whether calling the leaves' ``forward`` is exactly ``block(x)`` right now."""
        if any(_GLOBAL_HOOKS) or torch._C._get_tracing_state():
            return False
        for m in self._modules:
            d = m.__dict__
            if (d["_forward_hooks"] or d["_forward_pre_hooks"] or d["_backward_hooks"]
                    or d["_backward_pre_hooks"] or d.get("_compiled_call_impl") is not None):
                return False
        for seq, children in self._sequentials:
            if tuple(seq._modules.values()) != children:
                return False
        return True
