"""One implicit stage ``z = c + gamma * f(t, z)``: its root solve and its gradient by the
implicit-function theorem.

Forward: the root finder runs without a graph. If gradients are wanted, one evaluation
``G(z*) = c + gamma f(t, z*)`` at the (detached) root builds a graph to ``c``, ``gamma``,
``t`` and every tensor the field uses (parameters included, whether or not they are
listed), and the stage returns ``z* + (G(z*) - G(z*).detach())`` (the value is exactly
``z*``) passed through :class:`_TransposeSolve`. That autograd.Function is the identity
going forward; going backward it turns the incoming gradient ``g`` into
``lam = (I - gamma J^T)^{-1} g`` (``J = df/dz`` at ``z*``), so autograd's ordinary pass
through ``G``'s graph then yields ``dL/dc = lam`` and ``dL/dtheta = gamma lam^T df/dtheta``:
one vector-Jacobian product at the root. The iterations are never differentiated.

The transposed system is solved by the forward root finder applied to the linear map
``lam -> g + gamma J^T lam`` (Picard/Anderson: fixed point on the transpose; Newton: a
per-sample dense Jacobian, exact in one iteration). For Newton–Krylov the system is
solved directly: one restarted GMRES with VJPs to ``rtol |g|`` per sample (right-
preconditioned by ``P^-T`` when the forward had a field preconditioner ``P``), its
residual then checked (a Newton iteration around a linear solve would only add products).
"""

from __future__ import annotations

from typing import Optional

import torch

from ._krylov import _counted, gmres
from ._problem import VectorField
from ._root import AbstractRootFinder, BatchView, Tolerance, alternatives
from ._rootbase import work_dtype
from ._solution import RootFinderError

__all__ = ["StageEquation", "TransposeEquation", "solve_stage", "per_sample_jacobian", "attach_ift", "needs_graph"]


def per_sample_jacobian(fx: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """``(B, n, n)`` blocks ``J[b] = d fx[b] / d xr[b]`` from ``n`` batched VJPs (graph kept).

    Exact for fields that act on each sample independently; the block diagonal otherwise.
    """
    B, n = fx.shape
    if not fx.requires_grad:  # a field that does not depend (differentiably) on the state
        return fx.new_zeros(B, n, n)
    eye = torch.eye(n, dtype=fx.dtype, device=fx.device)
    E = eye[:, None, :].expand(n, B, n).contiguous()  # (n, B, n): E[j, b] = e_j
    try:
        rows = torch.autograd.grad(fx, xr, E, retain_graph=True, is_grads_batched=True, allow_unused=True)[0]
    except RuntimeError:  # a field vmap cannot batch over: one VJP per row
        rows = [torch.autograd.grad(fx, xr, E[j], retain_graph=True, allow_unused=True)[0] for j in range(n)]
        rows = None if rows[0] is None else torch.stack(rows)
    if rows is None:
        return fx.new_zeros(B, n, n)
    return rows.permute(1, 0, 2)  # (B, n, n): J[b, j, k] = d f_bj / d x_bk


def _vjp(fx, xr, v):
    if not fx.requires_grad:
        return torch.zeros_like(xr)
    out = torch.autograd.grad(fx, xr, v, retain_graph=True, allow_unused=True)[0]
    return torch.zeros_like(xr) if out is None else out


def _keep(x):
    return x


def _private_graph():
    """Saved-tensor hooks that store tensors as they are, for the root finder's own graphs.

    The Jacobian and JVP graphs a root finder builds (and differentiates at once, during the
    forward) are private to the stage solve. Under ``torch.utils.checkpoint`` the segment's
    saved-tensor hooks would otherwise capture them: ``autograd.grad`` on them in the forward
    then triggers a recomputation, and the replay in backward (where Newton reuses the cached
    Jacobian) saves a different number of tensors (``CheckpointError``). The innermost hooks
    win, so these keep the graph out of the checkpoint; the stage's own graph (``G(z*)``,
    built outside) is still checkpointed.
    """
    return torch.autograd.graph.saved_tensors_hooks(_keep, _keep)


def flat_gamma(gamma, view: BatchView):
    """``gamma`` in the flat ``(B, n)`` view: a float or 0-dim tensor as it is; a per-sample
    step factor (``[B, 1, ...]``, a per-sample time grid) expanded to one entry per unknown,
    so that ``J_G = diag(gamma) J_f`` is a row scaling in every view."""
    if not isinstance(gamma, torch.Tensor):
        return gamma
    gamma = gamma.detach()
    return gamma if gamma.ndim == 0 else view.flat_tol(gamma)


def scale_rows(gamma, J: torch.Tensor) -> torch.Tensor:
    """``diag(gamma) J`` for a ``(B, n, n)`` ``J``: ``gamma`` a float, 0-dim or ``(B, n)``."""
    if isinstance(gamma, torch.Tensor) and gamma.ndim == 2:
        return gamma[:, :, None] * J
    return J * gamma


class StageEquation:
    """``x = c + gamma f(t, x)`` in the real ``(B, n)`` view of the state (``gamma``: see
    :func:`flat_gamma`). ``pre``: ``(P^-1, P^-T)`` in the flat view (a preconditioner of
    the Newton matrix ``I - gamma J_f``, see :func:`field_preconditioner`) or ``None``."""

    def __init__(self, func, t, c, gamma, view: BatchView, key=None, pre=None):
        self.func, self.t, self.view, self.key = func, t, view, key
        self.c = view.flat(c.detach())
        self.gamma = flat_gamma(gamma, view)
        self.pre = pre

    def f(self, x):
        return self.view.flat(self.func(self.t, self.view.state(x)))

    def G(self, x):
        return self.c + self.gamma * self.f(x)

    def _graph(self, x):
        with torch.enable_grad(), _private_graph():
            xr = x.detach().requires_grad_(True)
            fx = self.f(xr)
        return xr, fx

    def jacobian(self, x):
        xr, fx = self._graph(x)
        J = scale_rows(self.gamma, per_sample_jacobian(fx, xr))
        return self.c + self.gamma * fx.detach(), J

    def linearize(self, x):
        """``G(x)`` and ``v -> J_G v`` by double backward (works for fields that use autograd)."""
        xr, fx = self._graph(x)
        w = None
        if fx.requires_grad:
            with torch.enable_grad(), _private_graph():
                u = torch.zeros_like(fx, requires_grad=True)
                w = torch.autograd.grad(fx, xr, u, create_graph=True, allow_unused=True)[0]  # J^T u, linear in u
        gamma = self.gamma

        def jvp(v):
            if w is None or not w.requires_grad:
                return torch.zeros_like(v)
            out = torch.autograd.grad(w, u, v, retain_graph=True, allow_unused=True)[0]
            return torch.zeros_like(v) if out is None else gamma * out

        return self.c + gamma * fx.detach(), jvp


class TransposeEquation:
    """``lam = g + J^T gamma lam`` with ``J = df/dz`` at the root (``fx``'s graph at ``xr``);
    ``gamma`` as in :func:`flat_gamma` (a per-sample ``(B, n)`` one multiplies before the VJP)."""

    def __init__(self, fx, xr, gamma, g, stats):
        self.fx, self.xr, self.gamma, self.g, self.stats = fx, xr, gamma, g, stats
        self.key = None

    def _jt(self, v):
        self.stats.n_vjp_evals += 1
        if isinstance(self.gamma, torch.Tensor) and self.gamma.ndim == 2:
            return _vjp(self.fx, self.xr, self.gamma * v)
        return self.gamma * _vjp(self.fx, self.xr, v)

    def G(self, lam):
        return self.g + self._jt(lam)

    def linearize(self, lam):
        return self.G(lam), self._jt

    def jacobian(self, lam):
        J = scale_rows(self.gamma, per_sample_jacobian(self.fx, self.xr))
        self.stats.n_vjp_evals += J.shape[1]
        return self.G(lam), J.transpose(1, 2)


class _Spec:
    """What the backward pass of one stage needs (no per-solve state leaks elsewhere)."""

    __slots__ = ("func", "t", "z", "gamma", "view", "finder", "rtol", "stats", "fmap", "pre")

    def __init__(self, func, t, z, gamma, view, finder, rtol, stats, fmap=None, pre=None):
        self.func, self.t, self.z, self.gamma = func, t, z, gamma
        self.view, self.finder, self.rtol, self.stats = view, finder, rtol, stats
        #: ``x -> fx`` in the flat view with ``G(x) = const + gamma * fx`` (default: one stage,
        #: ``fx = f(t, x)``; a collocation step passes its coupled stage map)
        self.fmap = fmap
        #: the forward solve's preconditioner ``(P^-1, P^-T)`` (flat view), or ``None``
        self.pre = pre

    def solve_transpose(self, g_state: torch.Tensor) -> torch.Tensor:
        view, stats = self.view, self.stats
        g = view.flat(g_state)
        with torch.enable_grad():
            xr = view.flat(self.z).detach().requires_grad_(True)
            n0 = stats.n_f_evals
            fx = self.fmap(xr) if self.fmap is not None else view.flat(self.func(self.t, view.state(xr)))
            stats.n_f_evals_backward += stats.n_f_evals - n0
            stats.n_f_evals = n0
        eq = TransposeEquation(fx, xr, flat_gamma(self.gamma, view), g, stats)
        if self.finder.backward_kind == "krylov":
            return view.state(self._gmres_transpose(eq, g))
        # accuracy relative to the size of the incoming gradient, per sample
        gs = torch.sqrt(torch.mean(g * g, dim=1, keepdim=True))
        tol = Tolerance(self.rtol, self.rtol * gs + torch.finfo(g.dtype).tiny)
        res = self.finder.solve(eq, g, tol, stats, cache={})
        stats.n_backward_root_iters += res.iterations
        if not res.ok:
            raise RootFinderError(
                f"the transposed linear solve of an implicit step's gradient ({_time_text(self.t)}) failed with "
                f"root_finder={self.finder.name}: {res.reason} (iterations={res.iterations}, residual={res.residual:.3g}); "
                + alternatives(self.finder.name)
            )
        return view.state(res.x)


    def _gmres_transpose(self, eq: "TransposeEquation", g: torch.Tensor) -> torch.Tensor:
        """``(I - gamma J^T) lam = g`` is linear: one restarted GMRES to ``rtol |g|`` per sample
        (no Newton iteration around it, no line search), right-preconditioned by ``P^-T`` when
        the forward solve had a preconditioner ``P``; a residual above the bound raises
        :class:`RootFinderError`."""
        finder, stats = self.finder, self.stats
        w = work_dtype(g.dtype)

        def op(v):
            return (v - eq._jt(v.to(g.dtype))).to(w)

        gw = g.to(w)
        # the cycles a linear solve may take: the finder's Newton budget of GMRES cycles
        restart = getattr(finder, "restart", 20)
        cycles = getattr(finder, "max_restarts", 2) * max(getattr(finder, "max_iters", 1), 1)
        precond = None
        if self.pre is not None:  # right preconditioning by P^-T, the forward's P^-1 transposed
            precond = _counted(self.pre[1], stats, w)
        # the residual is GMRES's own (the Arnoldi relation's): for this exactly linear operator
        # (VJPs, no finite differences) it is the true |g - (I - gamma J^T) lam| up to rounding
        # (modified Gram-Schmidt GMRES is backward stable: Paige, Rozloznik & Strakos 2006),
        # so no further product is spent to recompute it
        lam, res = gmres(op, gw, rtol=self.rtol, restart=restart, max_restarts=cycles, precond=precond, return_residual=True)
        stats.n_linear_solves += 1
        stats.n_backward_root_iters += 1
        bound = self.rtol * torch.linalg.vector_norm(gw, dim=1) * 1.01 + torch.finfo(w).tiny
        bad = ~(res <= bound)  # NaN counts as bad
        if bool(bad.any()):
            worst = float((res / bound.clamp_min(torch.finfo(w).tiny)).max())
            raise RootFinderError(
                f"the transposed linear solve of an implicit step's gradient ({_time_text(self.t)}) did not reach its "
                f"tolerance with GMRES in {int(bad.sum())} of {g.shape[0]} sample(s) (residual up to {worst:.3g} x the "
                f"bound rtol |g|, rtol={self.rtol:g}, {cycles} restart cycles of {restart}); the Newton matrix "
                "I - h J is ill-conditioned here: use a smaller step, root_finder='newton' for small states, or raise "
                "NewtonKrylov(restart=..., max_restarts=...)"
            )
        return lam.to(g.dtype)


def _time_text(t: torch.Tensor) -> str:
    """The stage time for a message: one number, or the first of a per-sample ``[B]`` time."""
    t = t.detach().reshape(-1)
    return f"t={float(t[0]):.6g}" if t.numel() == 1 else f"t={float(t[0]):.6g} in sample 0 of {t.numel()}"


class _TransposeSolve(torch.autograd.Function):
    """Identity forward; backward maps ``g`` to ``(I - gamma J^T)^{-1} g`` at the root."""

    @staticmethod
    def forward(ctx, z, spec):
        ctx.spec = spec
        return z.view_as(z)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        return ctx.spec.solve_transpose(g), None


def needs_graph(func, c, gamma, t) -> bool:
    if not torch.is_grad_enabled():
        return False
    if c.requires_grad or (isinstance(gamma, torch.Tensor) and gamma.requires_grad) or t.requires_grad:
        return True
    params = known_params(func)
    if params is None:
        return True  # an opaque callable may close over tensors that require grad
    return any(p.requires_grad for p in params)


def known_params(func) -> Optional[list]:
    """The tensors a field depends on, when they can be known: ``func.params`` (set by the
    API from ``params=``), else the parameters of an ``nn.Module`` (or of the module a bound
    method belongs to); ``None`` for an opaque callable."""
    params = getattr(func, "params", None)
    if params is not None:
        return list(params)
    inner = getattr(func, "func", func)
    owner = getattr(inner, "__self__", inner)
    if isinstance(owner, torch.nn.Module):
        return list(owner.parameters())
    return None


def solve_stage(func, t, c, gamma, x0, finder: AbstractRootFinder, tol: Tolerance, view: BatchView, stats, cache: dict, key=None):
    """Solve ``z = c + gamma f(t, z)`` from the guess ``x0``; return ``(z, result)``.

    ``z`` carries the implicit-function-theorem gradient when gradients are enabled.
    """
    mode = getattr(finder, "preconditioner", "none")
    pre = None
    if mode != "none":
        # one preconditioner per solve and step factor: built at the first stage's guess and
        # reused by the later steps of the same size (it depends on the state only through
        # the field's mean slope, which changes little from step to step; any P is correct)
        gkey = float(gamma) if not isinstance(gamma, torch.Tensor) or gamma.ndim == 0 else None
        ckey = ("field_preconditioner", gkey, tuple(x0.shape), x0.dtype)
        pre = cache.get(ckey) if gkey is not None else None
        if pre is None:
            pre = field_preconditioner(func, t, x0, gamma, view, required=mode == "field")
            if gkey is not None and pre is not None:
                cache[ckey] = pre
    eq = StageEquation(func, t, c, gamma, view, key, pre=pre)
    with torch.no_grad():
        res = finder.solve(eq, view.flat(x0.detach()), tol, stats, cache)
    stats.n_root_solves += 1
    stats.n_root_iters += res.iterations
    stats.max_root_iters = max(stats.max_root_iters, res.iterations)
    if not res.ok:
        stats.n_root_failures += 1
    z = view.state(res.x)
    if res.ok and needs_graph(func, c, gamma, t):
        zd = z.detach()
        z = attach_ift(zd, c + gamma * func(t, zd), _Spec(func, t.detach(), zd, _detach(gamma), view, finder, _float_rtol(tol), stats, pre=pre))
    return z, res


def field_preconditioner(func, t, x0, gamma, view: BatchView, required: bool = False):
    """``(P^-1, P^-T)`` in the flat view from the field's ``implicit_preconditioner``, or ``None``.

    The field (the user's callable behind the solve's :class:`VectorField`) may offer
    ``implicit_preconditioner(t, y, gamma)``, returning an object with ``solve(v)`` and
    ``solve_transpose(v)`` (``v`` shaped like the state) that approximate
    ``(I - gamma J_f(t, y))^{-1}`` and its transpose, or ``None`` where it has none (odenet's
    parabolic fields do). :func:`solve_stage` asks once per solve and step factor, at the
    first stage's initial guess ``x0``, and keeps it in the solve's cache. A
    solve whose field is wrapped (a tuple state, reversed time) or a complex state gets
    none. ``required`` (``preconditioner="field"``): raise ``ValueError`` when there is none.
    """
    target = func
    if isinstance(func, VectorField):
        target = func.func if (type(func) is VectorField and not func.reverse and func.shapes is None) else None
        if target is not None and t.dtype != func.time_dtype:
            t = t.to(func.time_dtype)
    make = getattr(target, "implicit_preconditioner", None)
    pre = None
    if make is not None and not view.complex:
        pre = make(t, x0.detach(), _detach(gamma))
    if pre is None:
        if required:
            name = type(target).__name__ if target is not None else "a wrapped field (tuple state or reversed time)"
            raise ValueError(
                f"option `preconditioner='field'` needs a vector field with an `implicit_preconditioner(t, y, gamma)` "
                f"method that returns a preconditioner here (odenet's ParabolicConvField and ParabolicMLPField have "
                f"one), got {name}; use preconditioner='auto' (the field's when it has one) or 'none'")
        return None
    return (lambda v: view.flat(pre.solve(view.state(v)))), (lambda v: view.flat(pre.solve_transpose(view.state(v))))


def _detach(v):
    return v.detach() if isinstance(v, torch.Tensor) else v


def _float_rtol(tol: Tolerance) -> float:
    return tol.rtol if not isinstance(tol.rtol, torch.Tensor) else float(tol.rtol.max())


def attach_ift(zd: torch.Tensor, Gz: torch.Tensor, spec: "_Spec") -> torch.Tensor:
    """The root ``zd`` (detached) with the implicit-function-theorem gradient: ``Gz`` is one
    evaluation ``G(zd)`` with a graph to the equation's inputs; the value stays ``zd``."""
    if not Gz.requires_grad:
        return zd
    return _TransposeSolve.apply(zd + (Gz - Gz.detach()), spec)
