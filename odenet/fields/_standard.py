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

from typing import Optional

import torch
from torch import nn

from ._layerwise import LayerwiseField  # noqa: F401  (re-exported: it used to live here)

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
