"""Vector fields: ``nn.Module``s with ``forward(t, x) -> dx/dt`` shaped like ``x``.

A vector field is the one object shared by every view of a model: the discrete ResNet
(forward Euler), the implicit ResNet (backward Euler) and the continuous Neural ODE
(adaptive Runge–Kutta). Fields here never call a solver; :class:`odenet.ODEBlock` does.

Time conditioning (``time=``) is one of

``"none"``
    the field ignores ``t`` (autonomous; a weight-tied ResNet).
``"concat"``
    ``t`` is appended as an extra input feature (MLP) or a constant extra channel
    (convolution) to every linear/conv layer.
``"film"``
    every hidden layer's pre-activation is modulated per feature/channel,
    ``h -> h * (1 + gamma(t)) + beta(t)`` with ``(gamma, beta)`` an affine map of ``t``
    initialised to zero (so an untrained FiLM field starts time-independent).

Lipschitz constants (used with ``spectral_norm=True``): every activation offered here
except ``"gelu"``/``"silu"`` is 1-Lipschitz, so an :class:`MLPField` with spectrally
normalised layers and ``time`` in ``{"none", "concat"}`` is 1-Lipschitz in ``x``. A
:class:`ConvField`'s spectral normalisation divides by the norm of the reshaped kernel
``[out, in*k*k]`` (PyTorch's convention), which bounds the convolution operator's norm
by ``kernel_size`` (Gouk et al., 2021), not by 1; GroupNorm and FiLM are not bounded.
"""

from __future__ import annotations

import inspect
import math
from typing import List, Optional, Sequence

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "TIME_MODES",
    "MLPField",
    "ConvField",
    "LayerwiseField",
    "spectral_normalize",
]

#: Activation names accepted by the fields, mapped to their module classes.
ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

#: Ways a field can depend on time.
TIME_MODES = ("none", "concat", "film")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}")
    return value


def _check_time(time: str) -> str:
    if time not in TIME_MODES:
        raise ValueError(f"`time` must be one of {TIME_MODES}, got {time!r}")
    return time


def _activation(name: str) -> nn.Module:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def _check_kernel_size(kernel_size) -> int:
    _check_int("kernel_size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` must be odd so the field keeps the image size, got {kernel_size}")
    return kernel_size


def _check_images(field: nn.Module, x: torch.Tensor) -> None:
    """``x`` must be ``[B, field.channels, H, W]``; the error names the field class."""
    if x.dim() != 4 or x.shape[1] != field.channels:
        raise ValueError(
            f"{type(field).__name__}(channels={field.channels}) expects images of shape "
            f"[B, {field.channels}, H, W], got {tuple(x.shape)}")


def _time_like(t, x: torch.Tensor) -> torch.Tensor:
    """``t`` in ``x``'s dtype and device, shaped to broadcast against ``x`` (keeps its graph).

    A scalar time (a float, a 0-dim or one-element tensor) becomes a 0-dim tensor. A ``[B]``
    time (one per sample, as a solve on a per-sample grid ``t`` of shape ``[B, T]`` passes
    it) becomes ``[B, 1, ..., 1]`` with ``x.dim()`` dimensions, for a batch ``x`` ``[B, ...]``.
    """
    if isinstance(t, torch.Tensor):
        if t.numel() == 1:
            return t.reshape(()).to(dtype=x.dtype, device=x.device)
        if t.dim() == 1 and x.dim() >= 1 and t.shape[0] == x.shape[0]:
            return t.to(dtype=x.dtype, device=x.device).reshape(t.shape[0], *([1] * (x.dim() - 1)))
        raise ValueError(
            f"the field's time `t` must be a scalar or one time per sample ([B] with B = x.shape[0] = "
            f"{x.shape[0] if x.dim() else 'none'}), got a tensor of shape {tuple(t.shape)}"
        )
    return torch.as_tensor(float(t), dtype=x.dtype, device=x.device)


class _FiLM(nn.Module):
    """``(gamma(t), beta(t)) = W t + b`` for ``features`` channels, zero-initialised."""

    is_time_layer = True  # skipped by :func:`spectral_normalize`

    def __init__(self, features: int):
        super().__init__()
        self.proj = nn.Linear(1, 2 * features)
        self.proj.is_time_layer = True
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, t: torch.Tensor, h: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """``t``: a 0-dim time, or one per sample shaped ``[B, 1, ..., 1]`` (from ``_time_like``)."""
        shape = [1] * h.dim()
        if t.dim() == 0:
            gb = self.proj(t.reshape(1, 1)).reshape(2, -1)  # (2, features)
            shape[channel_dim] = gb.shape[1]
            gamma, beta = gb[0].reshape(shape), gb[1].reshape(shape)
        else:
            gb = self.proj(t.reshape(-1, 1)).reshape(-1, 2, self.proj.out_features // 2)  # (B, 2, features)
            shape[0], shape[channel_dim] = gb.shape[0], gb.shape[2]
            gamma, beta = gb[:, 0].reshape(shape), gb[:, 1].reshape(shape)
        return torch.addcmul(h + beta, h, gamma)  # h * (1 + gamma) + beta


class MLPField(nn.Module):
    """A fully connected vector field ``f(t, x)`` on states ``[..., dim]``.

    ``depth`` hidden layers of width ``hidden`` with ``activation`` between them, then a
    linear output layer back to ``dim``::

        x -> Linear(dim, hidden) -> act -> ... (depth hidden layers) -> Linear(hidden, dim)

    Parameters
    ----------
    dim : int
        Size of the state's last dimension.
    hidden : int
        Width of the hidden layers.
    depth : int
        Number of hidden layers (>= 1), i.e. ``depth + 1`` linear layers.
    activation : str
        One of :data:`ACTIVATIONS`.
    time : {"none", "concat", "film"}
        How the field depends on ``t`` (see the module docstring).
    spectral_norm : bool
        Wrap every linear layer that acts on the state with
        ``torch.nn.utils.parametrizations.spectral_norm``.

    Examples
    --------
    >>> f = MLPField(2, hidden=16)
    >>> f(torch.tensor(0.0), torch.zeros(5, 2)).shape
    torch.Size([5, 2])
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, activation: str = "tanh",
                 time: str = "none", spectral_norm: bool = False):
        super().__init__()
        self.dim = _check_int("dim", dim, 1)
        self.hidden = _check_int("hidden", hidden, 1)
        self.depth = _check_int("depth", depth, 1)
        self.time = _check_time(time)
        extra = 1 if time == "concat" else 0
        widths = [dim] + [hidden] * depth + [dim]
        self.linears = nn.ModuleList(nn.Linear(a + extra, b) for a, b in zip(widths[:-1], widths[1:]))
        self.acts = nn.ModuleList(_activation(activation) for _ in range(depth))
        self.films = nn.ModuleList(_FiLM(hidden) for _ in range(depth)) if time == "film" else None
        self.activation = activation
        if spectral_norm:
            spectral_normalize(self)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(
                f"MLPField(dim={self.dim}) expects a state of shape [..., {self.dim}], "
                f"got {tuple(x.shape)}; build the field with dim={x.shape[-1] if x.dim() else '?'} "
                "or reshape the data")
        if self.time == "none":
            h = x
            for lin, act in zip(self.linears, self.acts):
                h = act(lin(h))
            return self.linears[-1](h)
        tt = _time_like(t, x)
        h = x
        for i, lin in enumerate(self.linears):
            if self.time == "concat":
                h = torch.cat([h, tt.expand(*h.shape[:-1], 1)], dim=-1)
            h = lin(h)
            if i < self.depth:
                if self.films is not None:
                    h = self.films[i](tt, h, h.dim() - 1)
                h = self.acts[i](h)
        return h

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, depth={self.depth}, activation={self.activation!r}, time={self.time!r}"


class _TimeConv(nn.Module):
    """A same-padded ``Conv2d``; with ``concat`` time it sees ``t`` as an extra channel."""

    def __init__(self, cin: int, cout: int, kernel_size: int, concat: bool):
        super().__init__()
        self.concat = concat
        self.conv = nn.Conv2d(cin + int(concat), cout, kernel_size, padding=kernel_size // 2)

    def forward(self, t: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if self.concat:
            b, _, hgt, wid = x.shape
            x = torch.cat([x, t.expand(b, 1, hgt, wid)], dim=1)  # (B, C+1, H, W)
        return self.conv(x)


class ConvField(nn.Module):
    """A convolutional vector field on images ``[B, channels, H, W]`` (any ``H, W``).

    ``conv(channels -> hidden) -> [GroupNorm] -> act -> conv(hidden -> channels)``, both
    convolutions same-padded so the output has the input's shape.

    Parameters
    ----------
    channels : int
        Channels of the state.
    hidden : int, optional
        Channels of the hidden layer; defaults to ``channels``.
    kernel_size : int
        Odd kernel size.
    time : {"none", "concat", "film"}
        How the field depends on ``t``.
    groups : int, optional
        If given, a ``GroupNorm(groups, hidden)`` follows the first convolution;
        ``groups`` must divide ``hidden``.
    activation : str
        One of :data:`ACTIVATIONS`.
    spectral_norm : bool
        Spectrally normalise both convolutions (see the module docstring for the bound).
    """

    def __init__(self, channels: int, hidden: Optional[int] = None, kernel_size: int = 3, time: str = "none",
                 groups: Optional[int] = None, activation: str = "tanh", spectral_norm: bool = False):
        super().__init__()
        self.channels = _check_int("channels", channels, 1)
        self.hidden = _check_int("hidden", channels if hidden is None else hidden, 1)
        self.kernel_size = _check_kernel_size(kernel_size)
        self.time = _check_time(time)
        concat = time == "concat"
        self.conv1 = _TimeConv(self.channels, self.hidden, kernel_size, concat)
        self.conv2 = _TimeConv(self.hidden, self.channels, kernel_size, concat)
        if groups is not None:
            _check_int("groups", groups, 1)
            if self.hidden % groups:
                raise ValueError(f"`groups`={groups} must divide the hidden channels ({self.hidden})")
            self.norm = nn.GroupNorm(groups, self.hidden)
        else:
            self.norm = None
        self.groups = groups
        self.act = _activation(activation)
        self.activation = activation
        self.film = _FiLM(self.hidden) if time == "film" else None
        if spectral_norm:
            spectral_normalize(self)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        _check_images(self, x)
        tt = _time_like(t, x) if self.time != "none" else None
        h = self.conv1(tt, x)  # (B, hidden, H, W)
        if self.norm is not None:
            h = self.norm(h)
        if self.film is not None:
            h = self.film(tt, h, 1)
        return self.conv2(tt, self.act(h))  # (B, channels, H, W)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden={self.hidden}, kernel_size={self.kernel_size}, "
                f"time={self.time!r}, groups={self.groups}, activation={self.activation!r}")


def spectral_normalize(module: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Spectrally normalise every ``nn.Linear``/``nn.Conv*`` inside ``module`` in place.

    Layers that map time only (FiLM projections) are skipped: they do not act on the
    state, and their zero initialisation has no spectral norm to divide by. Layers that
    are already parametrised are left alone, so calling this twice is harmless.

    Returns
    -------
    nn.Module
        ``module`` itself.
    """
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm

    targets = [m for m in module.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
               and not getattr(m, "is_time_layer", False)
               and not parametrize.is_parametrized(m, "weight")]
    for m in targets:
        spectral_norm(m, n_power_iterations=n_power_iterations)
    return module


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


class LayerwiseField(nn.Module):
    """A vector field that is piecewise constant in time: block ``k`` owns one interval.

    With ``L = len(blocks)`` block ``k`` is the field on ``[k*t1/L, (k+1)*t1/L)`` (the
    last block also owns ``t = t1``). Hence ``ODEBlock(LayerwiseField(blocks, t1=L),
    method="euler", steps=L)`` is exactly the residual network
    ``for b in blocks: x = x + b(x)``, weights untied across layers.

    The block index of a time ``t`` is ``floor(t*L/t1 + tol)`` with ``tol`` a few
    machine epsilons of ``t``'s dtype (relative), so grid times ``k*h`` that round a hair
    below a boundary still select block ``k``.

    Other solvers: the field jumps at the interior :meth:`boundaries`, so a solver step
    that straddles one, or a stage evaluated exactly at a step's right end (RK4's last
    stage, backward Euler, Dormand–Prince's FSAL stage) would mix two blocks.
    :class:`odenet.ODEBlock` therefore integrates interval by interval with each block
    on its own (``piece(k)``) whenever a method is not a forward-Euler-type method on a
    grid aligned with the boundaries; adaptive methods then see a smooth field on every
    interval. Calling ``solvers.solve`` on this field directly with an adaptive method,
    pass ``options=dict(step_t=field.boundaries())`` at least; but note that a
    right-end stage at a boundary still evaluates the next block (rounding makes a
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
    """

    def __init__(self, blocks: Sequence[nn.Module], t1: float = 1.0, takes_time: Optional[bool] = None):
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
        self.blocks = nn.ModuleList(blocks)
        self.t1 = float(t1)
        self.takes_time = [(_takes_time(b) if takes_time is None else bool(takes_time)) for b in blocks]
        self._pieces = [_Piece(b, tt) for b, tt in zip(blocks, self.takes_time)]
        self._memo: dict = {}  # id(t) -> (t, t._version, block index), "n" -> blocks; see _block_of

    def __len__(self) -> int:
        return len(self.blocks)

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

    def boundaries(self) -> List[float]:
        """The interior times ``k*t1/L`` (``k = 1..L-1``) where the field jumps."""
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
        """Block ``k`` alone as a vector field ``(t, x) -> dx`` (not registered twice)."""
        self.interval(k)  # range check
        return self._pieces[k]

    def index(self, t) -> int:
        """The block owning time ``t`` (a float or a scalar tensor; one host sync)."""
        tf = float(t.detach()) if isinstance(t, torch.Tensor) else float(t)
        n = len(self.blocks)
        eps = _eps(t.dtype) if isinstance(t, torch.Tensor) else 2.0**-52
        s = tf * n / self.t1
        tol = 64.0 * eps * max(1.0, abs(s))
        if not (-tol <= s <= n + tol):
            raise ValueError(f"LayerwiseField is defined on [0, {self.t1}] but was evaluated at t={tf!r}")
        return min(max(int(math.floor(s + tol)), 0), n - 1)

    @property
    def t1(self) -> float:
        """End of the time interval the blocks tile (setting it forgets every remembered block)."""
        return self._t1

    @t1.setter
    def t1(self, value) -> None:
        self.__dict__["_t1"] = value
        self.__dict__.setdefault("_memo", {}).clear()

    def _fresh_memo(self) -> dict:
        """The memo of :meth:`_block_of`, emptied first if the number of blocks changed."""
        memo = self._memo
        if memo.get("n") != len(self.blocks):
            memo.clear()
            memo["n"] = len(self.blocks)
        return memo

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
        return self._pieces[self._block_of(t)](t, x)

    def as_function(self):
        """This field as a plain function ``f(t, x)`` (no ``nn.Module`` call overhead).

        The blocks are called directly, so forward/backward hooks on the blocks still
        run but hooks on the ``LayerwiseField`` itself do not. :class:`odenet.ODEBlock`
        uses it on its fast path; the function reads the blocks at call time and finds
        them as :meth:`_block_of` does (its memo checked for the number of blocks when
        the function is made).
        """
        mods, takes_time = self.blocks._modules, self.takes_time
        memo = self._fresh_memo()
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

    def extra_repr(self) -> str:
        return f"t1={self.t1}, blocks={len(self.blocks)}"
