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

#: ``act'(h)`` of each monotone activation, in closed form (the preconditioner's mean slope)
_SLOPES = {
    "tanh": lambda h: 1 - torch.tanh(h) ** 2,
    "relu": lambda h: (h > 0).to(h.dtype),
    "softplus": torch.sigmoid,
    "elu": lambda h: torch.where(h > 0, torch.ones_like(h), torch.exp(h)),
    "sigmoid": lambda h: torch.sigmoid(h) * (1 - torch.sigmoid(h)),
}


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

    def _mean_slope(self, t, x: torch.Tensor) -> torch.Tensor:
        """``d``: the mean of ``act'(K x + b(t))`` over every entry of the batch (0-dim)."""
        h = self._k(x)
        if self.time != "none":
            h = h + _time_like(t, x) * self.hidden_bias_t
        return _SLOPES[self.activation](h).mean()

    def implicit_preconditioner(self, t, x: torch.Tensor, gamma):
        """An approximate inverse of the Newton matrix ``I - gamma J_f(t, x)`` of an implicit stage.

        ``J_f = -K^T D K + (A - A^T) + expansion I`` with ``D = diag(act'(K x + b))``;
        replacing ``D`` by its mean ``d`` over the batch leaves the constant-coefficient
        matrix ``P = I + gamma (d K^T K - (A - A^T) - expansion I)``, whose inverse is cheap
        (see the subclasses) and close to the Newton matrix's when the slopes vary little.
        Its symmetric part is ``>= (1 - gamma expansion) I``, so ``P`` is nonsingular
        wherever the implicit stage is well posed.

        Used by :class:`solvers.NewtonKrylov` with ``preconditioner="auto"`` or ``"field"``
        (right preconditioning of every GMRES solve, forward and transposed: the residuals
        that decide convergence stay the true ones, so a poor ``P`` costs iterations, never
        accuracy). ``gamma``: a float, a 0-dim tensor or one factor per sample
        (``[B, 1, ...]``). Returns an object with ``solve(v)`` (``P^{-1} v``) and
        ``solve_transpose(v)`` (``P^{-T} v``) for ``v`` shaped like ``x``, or ``None`` when
        ``P`` is not invertible in floating point (``gamma * expansion >= 1``).
        """
        with torch.no_grad():
            x = x.detach()
            wdt = torch.float64 if x.dtype == torch.float64 else torch.float32
            d = self._mean_slope(t, x).to(wdt)
            g = torch.as_tensor(gamma, dtype=wdt, device=x.device).detach()
            g = g.reshape(-1)  # (1,) or (B,)
            return self._preconditioner(d, g, wdt, x)

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

    def _kernel_hat(self, w: torch.Tensor, size, wdt) -> torch.Tensor:
        """``(U, V, out, in)``: the 2-D DFT (``rfft2`` on ``size``) of the circular convolution
        that zero-padded cross-correlation with ``w`` becomes on a periodic grid of ``size``."""
        p = self.padding
        k = torch.zeros(w.shape[0], w.shape[1], size[0], size[1], dtype=wdt, device=w.device)
        k[:, :, : w.shape[2], : w.shape[3]] = w.detach().to(wdt).flip(-1, -2)
        k = torch.roll(k, shifts=(-p, -p), dims=(-2, -1))
        return torch.fft.rfft2(k).permute(2, 3, 0, 1)

    def _preconditioner(self, d, g, wdt, x):
        pre = _FourierPreconditioner(self, d, g, wdt, x.shape[-2], x.shape[-1])
        return pre if pre.ok else None

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

    def _preconditioner(self, d, g, wdt, x):
        W = self.linear.weight.detach().to(wdt)  # (hidden, dim)
        L = d * (W.t() @ W) - self.expansion * torch.eye(self.dim, dtype=wdt, device=W.device)
        if self.skew:
            a = self.skew_linear.weight.detach().to(wdt)
            L = L - (a - a.t())
        P = torch.eye(self.dim, dtype=wdt, device=W.device) + g[:, None, None] * L  # (1 or B, dim, dim)
        Pinv, info = torch.linalg.inv_ex(P)
        if bool((info != 0).any()) or not bool(torch.isfinite(Pinv).all()):
            return None
        return _DensePreconditioner(Pinv)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, time={self.time!r}, activation={self.activation!r}, "
                f"skew={self.skew}, expansion={self.expansion}")


class _DensePreconditioner:
    """``P^{-1}`` as a ``(1 or B, dim, dim)`` matrix, acting on the last dimension of ``[B, ..., dim]``."""

    def __init__(self, Pinv: torch.Tensor):
        self.Pinv = Pinv

    def _apply(self, M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        vw = v.to(M.dtype)
        if M.shape[0] == 1 or vw.dim() < 2:
            out = vw @ M[0].t()
        else:  # one matrix per sample: [B, ..., dim] rows times P_b^T
            out = (vw.reshape(vw.shape[0], -1, vw.shape[-1]) @ M.transpose(1, 2)).reshape(vw.shape)
        return out.to(v.dtype)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(self.Pinv, v)

    def solve_transpose(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(self.Pinv.transpose(1, 2), v)


class _FourierPreconditioner:
    """``P^{-1}`` for a :class:`ParabolicConvField`, applied in Fourier space.

    A stride-1 convolution is diagonalised by the 2-D DFT on a periodic grid, one
    ``channels x channels`` block per frequency. The state ``[B, C, H, W]`` is zero-padded to
    ``(H + 2p) x (W + 2p)`` (``p`` the convolution's padding), so that the periodic
    convolution does not wrap the image onto itself; ``P``'s blocks are inverted once (a
    batched ``C x C`` inverse per frequency). Away from the image border this is the
    constant-coefficient matrix exactly; at the border the zero padding of the field's
    convolutions makes it an approximation (a preconditioner need only be close).

    The transforms are small dense real matrices (zero-padding, ``rfft2`` and the inverse
    transform with the crop folded in; for the small images of a classifier's ODE block
    three matrix products beat two FFTs), each complex block ``a + ib`` the real block
    ``[[a, -b], [b, a]]``: one application is a matrix product, a batched ``2C x 2C``
    product per frequency and a matrix product. The weight-dependent part (``K^T K`` and
    the skew part per frequency) is kept on the field for the weights it was built from
    (the same tensors during one :class:`odenet.ODEBlock` forward), so a new stage pays only
    for the ``C x C`` inverses.
    """

    def __init__(self, f: "ParabolicConvField", d, g, wdt, H: int, W: int):
        self.p = f.padding
        size = (H + 2 * self.p, W + 2 * self.p)
        Kw = f.conv.weight
        Aw = f.skew_conv.weight if f.skew else None
        memo = f.__dict__.get("_pc_memo")
        key = (size, wdt, Kw.device, f.expansion)
        if (memo is None or memo[0] is not Kw or memo[1] is not Aw or memo[2] != key
                or memo[3] != (Kw._version, None if Aw is None else Aw._version)):
            Kh = f._kernel_hat(Kw, size, wdt)  # (U, V, hidden, C)
            KtK = Kh.conj().transpose(-1, -2) @ Kh
            N = -f.expansion * torch.eye(f.channels, dtype=KtK.dtype, device=KtK.device)
            if Aw is not None:
                Ah = f._kernel_hat(Aw, size, wdt)
                N = N - (Ah - Ah.conj().transpose(-1, -2))
            Fr, Gr = _dft_matrices(H, W, size, wdt, Kw.device)
            memo = (Kw, Aw, key, (Kw._version, None if Aw is None else Aw._version), KtK, N, Fr, Gr)
            f.__dict__["_pc_memo"] = memo  # a plain attribute (not a buffer: never saved)
        KtK, N, self.Fr, self.Gr = memo[4:]
        C = f.channels
        eye = torch.eye(C, dtype=KtK.dtype, device=KtK.device)
        P = eye + g.to(KtK.dtype)[:, None, None, None, None] * (d * KtK + N)  # (1 or B, U, V, C, C)
        Pinv, info = torch.linalg.inv_ex(P)
        self.ok = not bool((info != 0).any()) and bool(torch.isfinite(torch.view_as_real(Pinv)).all())
        # each complex block a + ib as the real block [[a, -b], [b, a]]; the real block of the
        # conjugate transpose, which P^-T needs, is the transposed real block
        a_, b_ = Pinv.real, Pinv.imag
        R = torch.cat([torch.cat([a_, -b_], -1), torch.cat([b_, a_], -1)], -2)  # (1 or B, U, V, 2C, 2C)
        self.UV, self.C, self.wdt = R.shape[1] * R.shape[2], C, wdt
        self.R = R.reshape(R.shape[0], self.UV, 2 * C, 2 * C).contiguous()
        self.RT = self.R.transpose(-1, -2).contiguous()

    def _apply(self, transpose: bool, v: torch.Tensor) -> torch.Tensor:
        B, H, W = v.shape[0], v.shape[-2], v.shape[-1]
        UV, C = self.UV, self.C
        R = self.RT if transpose else self.R
        y = (v.to(self.wdt).reshape(B * C, H * W) @ self.Fr).view(B, C, 2, UV)  # (re, im) per frequency
        if R.shape[0] == 1:  # one P for the batch: (UV, 2C, 2C) @ (UV, 2C, B)
            z = torch.bmm(R[0], y.permute(3, 2, 1, 0).reshape(UV, 2 * C, B))
            z = z.view(UV, 2, C, B).permute(3, 2, 1, 0)
        else:  # one P per sample (a per-sample step): (B, UV, 2C, 2C) @ (B, UV, 2C, 1)
            z = R @ y.permute(0, 3, 2, 1).reshape(B, UV, 2 * C, 1)
            z = z.view(B, UV, 2, C).permute(0, 3, 2, 1)
        out = z.reshape(B * C, 2 * UV) @ self.Gr
        return out.view(v.shape).to(v.dtype)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(False, v)

    def solve_transpose(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(True, v)


def _dft_matrices(H: int, W: int, size, dtype, device):
    """``Fr`` ``(H W, 2 U V)``: an ``H x W`` image, zero-padded to ``size``, to the real and
    imaginary parts of its ``rfft2``; ``Gr`` ``(2 U V, H W)``: those parts back through
    ``irfft2`` on ``size``, cropped to ``H x W`` (both real-linear maps, built from basis vectors)."""
    E = torch.eye(H * W, dtype=dtype, device=device).view(H * W, H, W)
    Fc = torch.fft.rfft2(E, s=size)  # (HW, U, V)
    U, V = Fc.shape[1], Fc.shape[2]
    Fr = torch.view_as_real(Fc).permute(0, 3, 1, 2).reshape(H * W, 2 * U * V)
    Eb = torch.eye(2 * U * V, dtype=dtype, device=device).view(2 * U * V, 2, U, V).permute(0, 2, 3, 1)
    Gr = torch.fft.irfft2(torch.view_as_complex(Eb.contiguous()), s=size)[:, :H, :W].reshape(2 * U * V, H * W)
    return Fr.contiguous(), Gr.contiguous()
