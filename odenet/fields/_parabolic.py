"""Parabolic vector fields: a one-sided Lipschitz bound that keeps backward Euler well posed.

A *parabolic* field (Ruthotto & Haber, "Deep neural networks motivated by partial
differential equations", 2018) is

.. math::

    f(t, x) = -K^\\top \\sigma(K x + b(t)) + (A - A^\\top) x + \\nu x + c(t)

with ``K`` a linear map (a convolution or a dense layer), :math:`K^\\top` its exact
adjoint (transposed convolution with the same weights), :math:`\\sigma` a
non-decreasing activation, an optional skew-symmetric part ``A - A^T`` and a fixed
*expansion rate* :math:`\\nu` (any sign; default 0). The first term is minus the gradient of the convex potential
:math:`\\sum \\Sigma(Kx + b)` (:math:`\\Sigma' = \\sigma`), the skew part conserves
norms, so for all ``x, y``

.. math::

    \\langle f(t, x) - f(t, y), x - y \\rangle \\le \\nu \\, \\|x - y\\|^2 ,

i.e. the field's *one-sided Lipschitz constant* is at most :math:`\\nu`
(:attr:`one_sided_lipschitz`), however large its weights grow in training. Three
consequences the three views of a model rely on:

- backward Euler ``x1 = x0 + h f(t1, x1)`` has exactly one solution whenever
  :math:`h \\nu < 1` (every ``h`` if :math:`\\nu \\le 0`): ``x -> x - h f(t, x)`` is
  strongly monotone with constant :math:`1 - h\\nu > 0`, so the implicit ResNet never
  meets an ill-posed step, and the Jacobian ``I - h J`` of its root-finding problem has
  symmetric part :math:`\\succeq (1 - h\\nu) I` (Newton's and GMRES's linear systems, and
  the transposed ones of the implicit-function-theorem gradient, are never singular);
- trajectories separate at most exponentially at rate :math:`\\nu`:
  :math:`|x(t) - y(t)| \\le e^{\\nu t} |x(0) - y(0)|` for the exact flow, and
  :math:`|x_1 - y_1| \\le |x_0 - y_0| / (1 - h\\nu)` per backward Euler step;
- forward Euler is *not* unconditionally stable on such a field (its stiff directions
  need ``h |J| < 2``): the explicit ResNet remains the view with a step-size limit.

With :math:`\\nu \\le 0` the flow contracts, which limits what the continuous and
implicit views can express (a classifier's ODE block can then only merge, never
separate, its inputs); a small positive :math:`\\nu` buys that back while keeping every
backward Euler step with :math:`h < 1/\\nu` well posed. :class:`odenet.ODEBlock`
refuses an implicit fixed-step configuration with :math:`h\\nu \\ge 1` on such a field.

Unlike spectral normalisation, which bounds the Lipschitz constant ``|J|`` and so
limits what the field can express, the parabolic structure bounds only the symmetric
part of the Jacobian from above; ``|J|`` itself is free.

Time dependence: ``b(t)`` and ``c(t)`` may be affine in ``t`` (``time="concat"``);
any ``x``-independent time dependence keeps the bound. FiLM (a multiplicative
modulation of ``Kx``) is not offered: a negative gain would break the sign structure.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._standard import _activation, _check_images, _check_int, _check_kernel_size, _time_like, spectral_normalize

__all__ = ["MONOTONE_ACTIVATIONS", "ParabolicConvField", "ParabolicMLPField"]

#: Activations that are non-decreasing, as the parabolic structure requires.
MONOTONE_ACTIVATIONS = ("tanh", "relu", "softplus", "elu", "sigmoid")

_TIME_MODES = ("none", "concat")


def _check_args(activation: str, time: str, expansion: float) -> float:
    if activation not in MONOTONE_ACTIVATIONS:
        raise ValueError(f"`activation` must be a non-decreasing activation, one of {MONOTONE_ACTIVATIONS}, "
                         f"got {activation!r} (the parabolic structure needs sigma' >= 0)")
    if time not in _TIME_MODES:
        raise ValueError(f"`time` must be one of {_TIME_MODES} for a parabolic field, got {time!r} (FiLM "
                         "scales K x by a learned gain whose sign could break the dissipativity bound)")
    if isinstance(expansion, bool) or not isinstance(expansion, (int, float)) or not math.isfinite(expansion):
        raise ValueError(f"`expansion` must be a finite number (the field's one-sided Lipschitz bound), "
                         f"got {expansion!r}")
    return float(expansion)


class _ParabolicBase(nn.Module):
    """The parabolic formula; subclasses supply ``K x``, ``K^T y``, the skew term and a shape check."""

    def _init_common(self, activation: str, time: str, expansion: float, bias_shape_hidden, bias_shape_state):
        self.expansion = _check_args(activation, time, expansion)
        self.time = time
        self.activation = activation
        self.act = _activation(activation)
        self.out_bias = nn.Parameter(torch.zeros(bias_shape_state))  # c: a constant drift
        if time == "concat":  # b(t) = b + t * b_t, c(t) = c + t * c_t; zero-initialised slopes
            self.hidden_bias_t = nn.Parameter(torch.zeros(bias_shape_hidden))
            self.out_bias_t = nn.Parameter(torch.zeros(bias_shape_state))
        else:
            self.hidden_bias_t = None
            self.out_bias_t = None

    @property
    def one_sided_lipschitz(self) -> float:
        """An upper bound on ``<f(t,x)-f(t,y), x-y> / |x-y|^2``: ``expansion``, whatever the weights."""
        return self.expansion

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        self._check_state(x)
        h = self._k(x)  # K x + b, the constant bias b included
        c = self.out_bias
        if self.time != "none":
            tt = _time_like(t, x)
            h = h + tt * self.hidden_bias_t
            c = c + tt * self.out_bias_t
        out = c - self._kt(self.act(h))  # -K^T act(K x + b(t)) + c(t)
        if self.skew:
            out = out + self._skew_term(x)  # (A - A^T) x
        if self.expansion:
            out = out + self.expansion * x
        return out


class ParabolicConvField(_ParabolicBase):
    """A convolutional parabolic field on images ``[B, channels, H, W]`` (any ``H, W``).

    ``f(t, x) = -conv_T(act(conv(x) + b(t)), K) [+ conv(x, A) - conv_T(x, A)] + expansion * x + c(t)``,
    the transposed convolution using the same kernel ``K`` as the first, so that it is
    the exact adjoint of the (zero-padded, stride-1) convolution. See the module docstring
    for the bound this buys.

    Parameters
    ----------
    channels : int
        Channels of the state.
    hidden : int, optional
        Output channels of ``K`` (default ``channels``).
    kernel_size : int
        Odd kernel size of ``K`` (and of ``A``).
    time : {"none", "concat"}
        ``"concat"``: the hidden and output biases are affine in ``t``.
    activation : str
        A non-decreasing activation, one of :data:`MONOTONE_ACTIVATIONS`.
    skew : bool
        Add the norm-preserving term ``(A - A^T) x`` (two more convolutions per call;
        default True: it adds rotations the gradient part cannot express).
    expansion : float
        :math:`\\nu` in :math:`+\\nu x`, the field's one-sided Lipschitz bound (negative:
        strictly contractive). Backward Euler is well posed for steps ``h < 1/expansion``.
    spectral_norm : bool
        Spectrally normalise ``K`` (and ``A``); not needed for the bound.

    Examples
    --------
    >>> f = ParabolicConvField(4)
    >>> f(0.0, torch.zeros(2, 4, 8, 8)).shape
    torch.Size([2, 4, 8, 8])
    >>> f.one_sided_lipschitz
    0.0
    """

    def __init__(self, channels: int, hidden: Optional[int] = None, kernel_size: int = 3, time: str = "none",
                 activation: str = "tanh", skew: bool = True, expansion: float = 0.0, spectral_norm: bool = False):
        super().__init__()
        self.channels = _check_int("channels", channels, 1)
        self.hidden = _check_int("hidden", channels if hidden is None else hidden, 1)
        self.kernel_size = _check_kernel_size(kernel_size)
        self._init_common(activation, time, expansion, (1, self.hidden, 1, 1), (1, self.channels, 1, 1))
        self.padding = kernel_size // 2
        self.conv = nn.Conv2d(self.channels, self.hidden, kernel_size, padding=self.padding)
        self.skew = bool(skew)
        self.skew_conv = (nn.Conv2d(self.channels, self.channels, kernel_size, padding=self.padding, bias=False)
                          if self.skew else None)
        if spectral_norm:
            spectral_normalize(self)

    def _check_state(self, x):
        _check_images(self, x)

    def _k(self, x):
        return self.conv(x)  # (B, hidden, H, W)

    def _kt(self, y):  # the exact adjoint of the zero-padded stride-1 convolution: (B, C, H, W)
        return F.conv_transpose2d(y, self.conv.weight, padding=self.padding)

    def _skew_term(self, x):
        return self.skew_conv(x) - F.conv_transpose2d(x, self.skew_conv.weight, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden={self.hidden}, kernel_size={self.kernel_size}, "
                f"time={self.time!r}, activation={self.activation!r}, skew={self.skew}, expansion={self.expansion}")


class ParabolicMLPField(_ParabolicBase):
    """A dense parabolic field on states ``[..., dim]``.

    ``f(t, x) = -W^T act(W x + b(t)) [+ (A - A^T) x] + expansion * x + c(t)`` with ``W`` of
    shape ``[hidden, dim]``. Parameters as :class:`ParabolicConvField`, with ``dim`` the
    size of the state's last dimension and ``hidden`` the rows of ``W``.
    """

    def __init__(self, dim: int, hidden: int = 64, time: str = "none", activation: str = "tanh",
                 skew: bool = True, expansion: float = 0.0, spectral_norm: bool = False):
        super().__init__()
        self.dim = _check_int("dim", dim, 1)
        self.hidden = _check_int("hidden", hidden, 1)
        self._init_common(activation, time, expansion, (hidden,), (dim,))
        self.linear = nn.Linear(dim, hidden)
        self.skew = bool(skew)
        self.skew_linear = nn.Linear(dim, dim, bias=False) if self.skew else None
        if spectral_norm:
            spectral_normalize(self)

    def _check_state(self, x):
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"ParabolicMLPField(dim={self.dim}) expects a state of shape [..., {self.dim}], "
                             f"got {tuple(x.shape)}")

    def _k(self, x):
        return self.linear(x)

    def _kt(self, y):
        return y @ self.linear.weight  # W^T y for row vectors y

    def _skew_term(self, x):
        a = self.skew_linear.weight
        return x @ (a.t() - a)  # (A - A^T) x for row vectors x

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, time={self.time!r}, activation={self.activation!r}, "
                f"skew={self.skew}, expansion={self.expansion}")
