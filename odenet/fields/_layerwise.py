"""Layerwise fields: one block of weights per time interval (an untied ResNet), and the
options that keep such a field smooth in time so it survives a solver swap.

:class:`LayerwiseField` tiles ``[0, t1]`` with ``L`` blocks. Block ``k`` sits at the
*knot* ``tau_k = k h`` (``h = t1 / L``), the time at which forward Euler with ``L``
steps evaluates it. ``interpolation`` says what the field is between knots:

``"constant"`` (default)
    block ``k`` on ``[tau_k, tau_{k+1})``: a piecewise-constant field, the untied ResNet.
``"linear"``
    the *parameters* are interpolated linearly between knots,
    ``theta(t) = theta_k + (t - tau_k)/h (theta_{k+1} - theta_k)`` on ``[tau_k, tau_{k+1}]``
    (``k < L - 1``), and ``theta_{L-1}`` on the last interval ``[tau_{L-1}, t1]``. The
    field is then continuous in ``t``, and analytic in ``t`` inside every interval.

Both agree at the knots, so ``ODEBlock(field, method="euler", steps=L)`` is the same
residual network ``x_{k+1} = x_k + h b_k(x_k)`` in both modes; another solver integrates
a step function (``"constant"``) or its piecewise-linear interpolant (``"linear"``). The
knots are the block *starts*, not the block centres, for exactly that reason: with
centres the Euler ResNet of the interpolated field would evaluate averaged weights and
stop being the network that was trained. :class:`odenet.ODEBlock` integrates a
layerwise field interval by interval for every method but a forward-Euler-type one on
an aligned grid, so each solve sees a field that is smooth in ``t`` and every method
converges with its own order (with ``"constant"`` it converges to the ODE of the step
function, which an Euler ResNet with large unrelated blocks is not close to).

Smoothness across blocks (Sander et al., NeurIPS 2022, "Do residual neural networks
discretize neural ODEs?"): a ResNet stays close to the discretisation of an ODE when its
weights are samples ``theta_k = Theta(tau_k)`` of a smooth function of depth, with the
residual scaled by ``h = t1 / L`` (keep ``t1`` fixed as ``L`` grows; the classifiers use
``t1 = 1``). Gradient training keeps an initial smoothness of that kind (their Theorem
for linear ResNets), while independently initialised blocks stay rough. Hence

- ``init="tied"``: every block starts as a copy of block 0 (a constant function of depth);
- ``init="smooth"``: per parameter tensor,
  ``theta_k = (1 - s_k) m_A + s_k m_B + cos(pi s_k / 2) (A - m_A) + sin(pi s_k / 2) (B - m_B)``
  with ``s_k = k / (L - 1)``, ``A`` and ``B`` the initial tensors of blocks ``0`` and
  ``L - 1`` and ``m_A``, ``m_B`` their means: an analytic function of depth whose
  differences are ``O(1/L)``. As ``cos^2 + sin^2 = 1`` the random part of each block keeps
  the variance of the architecture's own (independent) initialisation, and a tensor
  initialised to a constant (a zero bias, a norm's unit weight) stays that constant;
- :meth:`LayerwiseField.smoothness_penalty`: a training penalty on the differences.
"""

from __future__ import annotations

import inspect
import math
from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

__all__ = ["LayerwiseField", "INTERPOLATIONS", "LAYER_INITS"]

#: Values of ``LayerwiseField(interpolation=...)``.
INTERPOLATIONS = ("constant", "linear")

#: Values of ``LayerwiseField(init=...)`` besides ``None`` (keep the blocks as given).
LAYER_INITS = ("tied", "smooth")


def _takes_time(block: nn.Module) -> bool:
    """Whether ``block.forward`` takes ``(t, x)`` (two positional arguments) or ``x``."""
    try:
        sig = inspect.signature(block.forward)
    except (TypeError, ValueError):
        return False
    pos = [p for p in sig.parameters.values()
           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        return False
    return len(pos) >= 2


def _architecture_mismatch(a: nn.Module, b: nn.Module) -> Optional[str]:
    """Why ``b`` is not built like ``a`` (class, parameter/buffer names and shapes, repr), or None."""
    if type(a) is not type(b):
        return f"it is a {type(b).__name__}, blocks[0] a {type(a).__name__}"
    for kind, xs, ys in (("parameters", a.named_parameters(), b.named_parameters()),
                         ("buffers", a.named_buffers(), b.named_buffers())):
        xs = {n: (tuple(p.shape), p.dtype) for n, p in xs}
        ys = {n: (tuple(p.shape), p.dtype) for n, p in ys}
        if xs.keys() != ys.keys():
            return f"its {kind} are {sorted(ys)}, those of blocks[0] {sorted(xs)}"
        for n in xs:
            if xs[n] != ys[n]:
                return f"its {kind[:-1]} {n!r} has shape/dtype {ys[n]}, that of blocks[0] {xs[n]}"
    if repr(a) != repr(b):
        return f"its configuration differs:\n{b!r}\nvs blocks[0]:\n{a!r}"
    return None


#: Machine epsilon per floating dtype (``torch.finfo`` is slow to call per step).
_EPS = {d: torch.finfo(d).eps for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}
#: Time tensors a LayerwiseField remembers the block of before it starts afresh.
_MEMO_SIZE = 1024


def _eps(dtype: torch.dtype) -> float:
    eps = _EPS.get(dtype)
    if eps is None:
        eps = torch.finfo(dtype).eps if dtype.is_floating_point else 2.0**-52
    return eps


class _Piece(nn.Module):
    """Block ``k`` of a :class:`LayerwiseField` as a vector field ``(t, x) -> block(x)``."""

    def __init__(self, block: nn.Module, takes_time: bool):
        super().__init__()
        self.block = block
        self.takes_time = takes_time

    def forward(self, t, x):
        return self.block(t, x) if self.takes_time else self.block(x)


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    """``module``'s tensor at dotted ``name`` as the attribute reads now."""
    prefix, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(prefix) if prefix else module, attr)


class _LinearPiece(nn.Module):
    """Interval ``k`` of a linearly interpolated :class:`LayerwiseField`: the parameters
    ``lerp(theta_k, theta_{k+1}, (t - start)/h)`` applied with ``functional_call``.

    Registers blocks ``k`` and ``k + 1`` (so ``parameters()`` lists exactly the weights the
    interval depends on, as the adjoint gradient modes need). At a knot (weight within a
    few ulps of 0 or 1) it calls that block itself, so Euler on the knots is the ResNet bit
    for bit.
    """

    def __init__(self, left: nn.Module, right: nn.Module, takes_time: bool, start: float, h: float):
        super().__init__()
        self.left, self.right = left, right
        self.takes_time, self.start, self.h = takes_time, start, h
        self.names = [n for n, _ in left.named_parameters()]

    def weight(self, t) -> float:
        if isinstance(t, torch.Tensor) and t.numel() != 1:
            raise ValueError("LayerwiseField takes one time shared by the batch; got times of shape "
                             f"{tuple(t.shape)} (per-sample time grids are not supported)")
        w = (float(t) - self.start) / self.h
        tol = 64.0 * 2.0**-52 * max(1.0, abs(float(t)) / self.h)
        return 0.0 if abs(w) <= tol else 1.0 if abs(w - 1.0) <= tol else w

    def forward(self, t, x):
        w = self.weight(t)
        args = (t, x) if self.takes_time else (x,)
        if w == 0.0:
            return self.left(*args)
        if w == 1.0:
            return self.right(*args)
        # read by attribute, not named_parameters(): under an outer functional_call (or
        # torch.func transforms) the blocks' tensors are swapped attributes
        params = {n: torch.lerp(_tensor(self.left, n), _tensor(self.right, n), w) for n in self.names}
        return functional_call(self.left, params, args)


class LayerwiseField(nn.Module):
    """A vector field with one block of weights per time interval (see the module docstring).

    With ``L = len(blocks)`` block ``k`` owns ``[k*t1/L, (k+1)*t1/L)`` (the last block also
    owns ``t = t1``). Hence ``ODEBlock(LayerwiseField(blocks, t1=L), method="euler",
    steps=L)`` is exactly the residual network ``for b in blocks: x = x + b(x)``, weights
    untied across layers, whatever ``interpolation``.

    The block index of a time ``t`` is ``floor(t*L/t1 + tol)`` with ``tol`` a few
    machine epsilons of ``t``'s dtype (relative), so grid times ``k*h`` that round a hair
    below a boundary still select block ``k``.

    Other solvers: with ``interpolation="constant"`` the field jumps at the interior
    :meth:`boundaries`, so a solver step that straddles one, or a stage evaluated exactly
    at a step's right end (RK4's last stage, backward Euler, Dormand–Prince's FSAL stage)
    would mix two blocks; with ``"linear"`` its time derivative jumps there, which costs a
    high-order method its order. :class:`odenet.ODEBlock` therefore integrates interval by
    interval with :meth:`piece` ``(k)`` whenever a method is not a forward-Euler-type
    method on a grid aligned with the boundaries; every solve then sees a field that is
    smooth in ``t``. Calling ``solvers.solve`` on this field directly with an adaptive
    method, pass ``options=dict(step_t=field.boundaries())`` at least; but note that a
    right-end stage at a boundary still evaluates the next interval (rounding makes a
    one-ulp ``jump_t`` nudge indistinguishable from a grid time), so the per-interval
    solve is the exact route.

    Parameters
    ----------
    blocks : sequence of nn.Module
        Each maps ``x -> dx`` or ``(t, x) -> dx`` (detected from its ``forward``
        signature unless ``takes_time`` says).
    t1 : float
        End of the time interval the blocks tile.
    takes_time : bool, optional
        Force how blocks are called: ``True`` -> ``block(t, x)``, ``False`` -> ``block(x)``.
    interpolation : {"constant", "linear"}
        What the field is between the knots ``k*t1/L`` (module docstring). ``"linear"``
        needs blocks of identical architecture without parametrisations (spectral norm).
    init : {None, "tied", "smooth"}
        Overwrite the blocks' parameters in place at construction so they are a smooth
        function of depth (module docstring; needs identical architectures). ``None``
        keeps them as given.

    Raises
    ------
    ValueError
        For an unknown ``interpolation`` or ``init``, or blocks of different architecture
        where one of them needs identical ones (the message names the first block that
        differs and how).
    """

    def __init__(self, blocks: Sequence[nn.Module], t1: float = 1.0, takes_time: Optional[bool] = None,
                 interpolation: str = "constant", init: Optional[str] = None):
        super().__init__()
        if isinstance(blocks, nn.Module) and not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            raise TypeError("`blocks` must be a sequence of nn.Module (e.g. a list or nn.ModuleList), got a single module")
        blocks = list(blocks)
        if not blocks:
            raise ValueError("`blocks` must hold at least one module")
        for i, b in enumerate(blocks):
            if not isinstance(b, nn.Module):
                raise TypeError(f"`blocks[{i}]` must be an nn.Module, got {type(b).__name__}")
        if isinstance(t1, bool) or not isinstance(t1, (int, float)) or not math.isfinite(t1) or t1 <= 0:
            raise ValueError(f"`t1` must be a positive finite number, got {t1!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"`interpolation` must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if init is not None and init not in LAYER_INITS:
            raise ValueError(f"`init` must be None or one of {LAYER_INITS}, got {init!r}")
        self.blocks = nn.ModuleList(blocks)
        self.t1 = float(t1)
        self.interpolation = interpolation
        self._takes_time_arg = takes_time
        self.takes_time = [(_takes_time(b) if takes_time is None else bool(takes_time)) for b in blocks]
        if interpolation != "constant":
            self.check_identical(f"interpolation={interpolation!r}")
            bad = [i for i, b in enumerate(blocks) if any(parametrize.is_parametrized(m) for m in b.modules())]
            if bad:
                raise ValueError(f"interpolation={interpolation!r} cannot interpolate parametrised weights "
                                 f"(blocks[{bad[0]}] has one, e.g. spectral norm); build the blocks without "
                                 "spectral_norm or use interpolation='constant'")
        if init is not None:
            self._initialise(init)
        self._pieces = self._build_pieces()
        self._pieces_for = self.structure()
        self._memo: dict = {}  # id(t) -> (t, t._version, block index), "n" -> blocks; see _block_of

    def __getstate__(self):  # copies and pickles start with an empty memo (see _block_of)
        state = self.__dict__.copy()
        state["_memo"] = {}
        state.pop("_function", None)
        return state

    def __setstate__(self, state):
        if "t1" in state and "_t1" not in state:  # pickled before t1 became a property
            state = dict(state, _t1=state.pop("t1"))
        super().__setstate__(state)
        self.__dict__.setdefault("_memo", {})
        self.__dict__.setdefault("_pieces_for", None)  # (pickled before pieces were rebuilt on change)

    @property
    def t1(self) -> float:
        """End of the time interval the blocks tile (setting it forgets every remembered block)."""
        return self._t1

    @t1.setter
    def t1(self, value) -> None:
        self.__dict__["_t1"] = value
        self.__dict__.setdefault("_memo", {}).clear()

    def _current_pieces(self) -> list:
        """The pieces, rebuilt if a block was replaced or added since they were built."""
        self._fresh_memo()  # (extends takes_time to added blocks)
        now = self.structure()
        if now != self._pieces_for:
            self.__dict__["_pieces"], self.__dict__["_pieces_for"] = self._build_pieces(), now
        return self._pieces

    def _build_pieces(self) -> list:
        n, h = len(self.blocks), self.t1 / len(self.blocks)
        blocks, tt = list(self.blocks), self.takes_time
        if self.interpolation == "constant":
            return [_Piece(b, t) for b, t in zip(blocks, tt)]
        return ([_LinearPiece(blocks[k], blocks[k + 1], tt[k], k * h, h) for k in range(n - 1)]
                + [_Piece(blocks[-1], tt[-1])])

    # ------------------------------------------------------------------ smoothness across blocks

    def check_identical(self, why: str = "this operation") -> None:
        """Raise ``ValueError`` unless every block is built like ``blocks[0]`` (class,
        parameter and buffer names, shapes and dtypes, configuration, time signature)."""
        first = self.blocks[0]
        for i, b in enumerate(self.blocks):
            why_not = _architecture_mismatch(first, b)
            if why_not is None and self.takes_time[i] != self.takes_time[0]:
                why_not = "it takes (t, x) and blocks[0] does not, or the reverse"
            if why_not is not None:
                raise ValueError(f"LayerwiseField: {why} needs blocks of identical architecture, but "
                                 f"blocks[{i}] differs from blocks[0]: {why_not}")

    @torch.no_grad()
    def _initialise(self, init: str) -> None:
        self.check_identical(f"init={init!r}")
        n = len(self.blocks)
        names = [name for name, _ in self.blocks[0].named_parameters()]
        params = [dict(b.named_parameters()) for b in self.blocks]
        a = {name: params[0][name].detach().clone() for name in names}
        b = {name: params[-1][name].detach().clone() for name in names}
        for k in range(n):
            s = k / (n - 1) if n > 1 else 0.0
            for name in names:
                if init == "tied":
                    params[k][name].copy_(a[name])
                    continue
                ma, mb = a[name].mean(), b[name].mean()
                params[k][name].copy_((1 - s) * ma + s * mb + math.cos(math.pi * s / 2) * (a[name] - ma)
                                      + math.sin(math.pi * s / 2) * (b[name] - mb))

    def smoothness_penalty(self) -> torch.Tensor:
        """``sum_k |theta_{k+1} - theta_k|^2 / h`` over consecutive blocks (``h = t1 / L``).

        ``|.|`` is the Euclidean norm over all parameters of a block. This is the discrete
        H1 seminorm in depth: exactly ``int |dtheta/dt|^2 dt`` of the piecewise-linear
        interpolant through the knots (``interpolation="linear"``), so it stays bounded as
        ``L`` grows for weights sampled from a smooth function of depth and grows like
        ``L`` for independent ones. A 0-dim tensor with a graph to every block; zero for
        one block.
        """
        self.check_identical("smoothness_penalty()")
        h = self.t1 / len(self.blocks)
        params = [[p for _, p in b.named_parameters()] for b in self.blocks]
        total = params[0][0].new_zeros(()) if params[0] else torch.zeros(())
        for prev, nxt in zip(params[:-1], params[1:]):
            for p, q in zip(prev, nxt):
                total = total + (q - p).pow(2).sum()
        return total / h

    # ------------------------------------------------------------------ time intervals

    def __len__(self) -> int:
        return len(self.blocks)

    def boundaries(self) -> List[float]:
        """The interior times ``k*t1/L`` (``k = 1..L-1``) where the field (or, with
        ``interpolation="linear"``, its time derivative) jumps."""
        n = len(self.blocks)
        h = self.t1 / n
        return [k * h for k in range(1, n)]

    def interval(self, k: int) -> tuple:
        """``(start, end)`` of block ``k``'s time interval (float64 values)."""
        n = len(self.blocks)
        if not 0 <= k < n:
            raise IndexError(f"block index {k} out of range for {n} blocks")
        h = self.t1 / n
        return (k * h, self.t1 if k == n - 1 else (k + 1) * h)

    def piece(self, k: int) -> nn.Module:
        """The field on interval ``k`` alone, ``(t, x) -> dx`` (not registered twice): block
        ``k`` (``"constant"``) or the interpolation between blocks ``k`` and ``k + 1``."""
        self.interval(k)  # range check
        return self._current_pieces()[k]

    def index(self, t) -> int:
        """The block owning time ``t`` (a float or a scalar tensor; one host sync)."""
        if isinstance(t, torch.Tensor) and t.numel() != 1:
            raise ValueError("LayerwiseField takes one time shared by the batch; got times of shape "
                             f"{tuple(t.shape)} (per-sample time grids are not supported)")
        tf = float(t.detach()) if isinstance(t, torch.Tensor) else float(t)
        n = len(self.blocks)
        eps = _eps(t.dtype) if isinstance(t, torch.Tensor) else 2.0**-52
        s = tf * n / self.t1
        tol = 64.0 * eps * max(1.0, abs(s))
        if not (-tol <= s <= n + tol):
            raise ValueError(f"LayerwiseField is defined on [0, {self.t1}] but was evaluated at t={tf!r}")
        return min(max(int(math.floor(s + tol)), 0), n - 1)

    def _fresh_memo(self) -> dict:
        """The memo of :meth:`_block_of`, emptied first if the number of blocks changed."""
        memo = self._memo
        if memo.get("n") != len(self.blocks):
            memo.clear()
            memo["n"] = len(self.blocks)
            self._sync_takes_time()
        return memo

    def _sync_takes_time(self) -> None:
        """Give blocks added after construction their ``takes_time`` entry (as the
        constructor would have), and drop the entries of removed ones."""
        tt, blocks = self.takes_time, list(self.blocks)
        if len(tt) != len(blocks):
            forced = self.__dict__.get("_takes_time_arg")
            self.takes_time = [tt[i] if i < len(tt) else (_takes_time(b) if forced is None else bool(forced))
                               for i, b in enumerate(blocks)]

    def _remember(self, t) -> int:
        """:meth:`index` of ``t``, stored in the memo when ``t`` can be (see :meth:`_block_of`)."""
        k = self.index(t)
        if isinstance(t, torch.Tensor) and not t.requires_grad and not t.is_inference():
            memo = self._memo
            if len(memo) > _MEMO_SIZE:
                n = memo.get("n")
                memo.clear()
                memo["n"] = n
            memo[id(t)] = (t, t._version, k)  # holds ``t``, so its id is not reused while remembered
        return k

    def _block_of(self, t) -> int:
        """:meth:`index` of ``t``, remembered per time tensor.

        A solver hands the same 0-dim time tensors to every forward on the same grid (it
        caches them), so after the first forward the block is found without reading the
        tensor: no host sync, none of :meth:`index`'s arithmetic. An entry serves only the
        very tensor object it was made for, at the same version counter (an in-place change
        of ``t`` misses it); setting :attr:`t1` or changing the number of blocks forgets
        every entry. Tensors that require grad and inference tensors (which have no version
        counter) are never remembered.
        """
        hit = self._fresh_memo().get(id(t))
        if hit is not None and hit[0] is t and hit[1] == t._version:
            return hit[2]
        return self._remember(t)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        if self.interpolation != "constant":
            pieces = self._current_pieces()
            return pieces[self._block_of(t)](t, x)
        k = self._block_of(t)
        block = self.blocks[k]
        return block(t, x) if self.takes_time[k] else block(x)

    def as_function(self):
        """This field as a plain function ``f(t, x)`` (no ``nn.Module`` call overhead).

        The blocks are called directly, so forward/backward hooks on the blocks still
        run but hooks on the ``LayerwiseField`` itself do not. :class:`odenet.ODEBlock`
        uses it on its fast path; the function reads the blocks at call time and finds
        them as :meth:`_block_of` does (its memo checked for the number of blocks when
        the function is made).
        """
        if self.interpolation != "constant":
            pieces, block_of = self._current_pieces(), self._block_of  # (checked once per function)
            return lambda t, x: pieces[block_of(t)](t, x)
        memo = self._fresh_memo()  # (first: it extends takes_time to added blocks)
        mods, takes_time = self.blocks._modules, self.takes_time
        made = self.__dict__.get("_function")  # the same function while nothing it captured changed
        if made is not None and made[0] is mods and made[1] is takes_time and made[2] == len(mods):
            return made[3]
        keys = [str(k) for k in range(len(mods))]
        remember = self._remember

        def f(t, x):
            hit = memo.get(id(t))
            k = hit[2] if hit is not None and hit[0] is t and hit[1] == t._version else remember(t)
            return mods[keys[k]](t, x) if takes_time[k] else mods[keys[k]](x)

        self.__dict__["_function"] = (mods, takes_time, len(mods), f)
        return f

    def structure(self) -> tuple:
        """What :meth:`step_blocks`' answer depends on: ``t1``, the interpolation, the blocks
        (by identity) and how each is called. Equal tuples mean the same answer."""
        return (self._t1, self.interpolation, tuple(self.blocks._modules.values()), tuple(self.takes_time))

    def step_blocks(self, times) -> Optional[tuple]:
        """The block each time in ``times`` selects, for a caller that calls it as ``block(x)``.

        ``step_blocks(ts)[i](x) == self(ts[i], x)``. ``None`` where that does not hold for
        a plain block call: ``interpolation="linear"``, or a block that takes ``(t, x)``.
        Valid while :meth:`structure` is unchanged. :class:`odenet.ODEBlock` re-runs a
        remembered Euler solve with them (no time lookup per step).
        """
        if self.interpolation != "constant" or any(self.takes_time):
            return None
        return tuple(self.blocks[self._block_of(t)] for t in times)

    def extra_repr(self) -> str:
        s = f"t1={self.t1}, blocks={len(self.blocks)}"
        return s if self.interpolation == "constant" else s + f", interpolation={self.interpolation!r}"
