"""The ODE block: integrate a vector field from 0 to ``t1`` with a swappable solver.

One :class:`ODEBlock` holds a vector field (the weights) and a solver configuration
(method, steps, tolerances, gradient mode, options). The configuration can be changed on
a trained model without touching the weights, permanently with :meth:`ODEBlock.configure`
or temporarily with :meth:`ODEBlock.using`::

    block = ODEBlock(field, method="euler", steps=10)     # a weight-tied ResNet
    with block.using(method="dopri5", rtol=1e-6):         # the same weights as a Neural ODE
        y = block(x)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

import solvers

from ._direct_calls import DirectCalls
from .fields._standard import LayerwiseField

__all__ = ["ODEBlock", "SOLVER_KEYS"]

#: The solver-configuration keys of an :class:`ODEBlock` (also accepted by the models).
SOLVER_KEYS = ("method", "t1", "steps", "rtol", "atol", "gradient", "options")


def _positive(name: str, v, *, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {v!r} ({type(v).__name__})")
    v = float(v)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"`{name}` must be a {'non-negative' if allow_zero else 'positive'} finite number, got {v}")
    return v


#: Bumped whenever any module anywhere registers a submodule (``register_parametrization``
#: does, as does assigning a module attribute): a cheap "the module tree may have changed".
_TREE_VERSION = [0]


def _tree_changed(module, name, submodule):
    _TREE_VERSION[0] += 1


torch.nn.modules.module.register_module_module_registration_hook(_tree_changed)


def _parametrized(module: nn.Module) -> List[tuple]:
    """``(submodule, tensor name)`` of every parametrised tensor inside ``module`` (the
    forward re-walks only after the module tree changed: see ``_TREE_VERSION``)."""
    return [(m, name) for m in module.modules() if parametrize.is_parametrized(m)
            for name in m.parametrizations.keys()]


def _implicit_gamma(cls) -> Optional[float]:
    """The largest diagonal coefficient of an implicit method's tableau (None without one)."""
    tab = getattr(cls, "tableau", None)
    if tab is None:
        return None
    return float(max(tab.a[i][i] for i in range(tab.stages)))


def _sum_stats(parts: List[solvers.Stats]) -> solvers.Stats:
    """Add up the counters of several solves (``max_root_iters`` takes the maximum)."""
    total = solvers.Stats()
    for f in dataclasses.fields(total):
        vals = [getattr(p, f.name) for p in parts]
        if any(v is None or isinstance(v, torch.Tensor) for v in vals):
            continue  # per-sample counters ([B] tensors, None on shared grids) are not summed across solves
        setattr(total, f.name, max(vals) if f.name.startswith("max_") else sum(vals))
    return total


class _Replay:
    """An :class:`ODEBlock`'s record of its latest plain fixed-step solve (solvers._replay):
    the configuration dict and field it was made with and, for a layerwise field whose
    blocks are plain ``block(x)`` calls, the block of every step and the field's
    :meth:`~odenet.LayerwiseField.structure` they are valid for."""

    __slots__ = ("cfg", "field", "replay", "calls", "structure", "direct")

    def __init__(self, cfg: dict, field: nn.Module, replay):
        self.cfg, self.field, self.replay = cfg, field, replay
        self.calls = field.step_blocks(replay.times) if isinstance(field, LayerwiseField) else None
        self.structure = field.structure() if self.calls is not None else None
        #: the same blocks called without nn.Module.__call__ while that is exact (_direct_calls)
        self.direct = DirectCalls.make(self.calls)


class ODEBlock(nn.Module):
    """Integrate ``dx/dt = field(t, x)`` from ``t = 0`` to ``t1``; return ``x(t1)``.

    Parameters
    ----------
    field : nn.Module
        The vector field, called as ``field(t, x)`` with ``t`` a 0-dim float64 tensor.
    method : str
        A name from ``solvers.METHODS`` (``"euler"``, ``"rk4"``, ``"dopri5"``, implicit
        methods, ...).
    t1 : float, optional
        End time of the integration; defaults to the field's ``t1`` for a
        :class:`~odenet.LayerwiseField` and to 1.0 otherwise.
    steps : int, optional
        Number of steps over ``[0, t1]`` for fixed-step (explicit or implicit) methods:
        step size ``t1 / steps``. Required for them unless ``options`` holds
        ``step_size`` or ``grid_constructor``. Adaptive methods do not use it (it is kept,
        so switching back to a fixed-step method restores it).
    rtol, atol : float
        Tolerances of adaptive methods.
    gradient : str
        ``"direct"`` (backprop through the steps), ``"adjoint"`` (continuous adjoint, the
        field's parameters are passed to the solver) or ``"checkpoint"``.
    options : dict, optional
        Further solver options (see ``solvers.solve``), e.g. ``max_num_steps`` or
        ``root_finder`` for implicit methods.

    Attributes
    ----------
    last_stats : solvers.Stats or None
        Counters of the latest forward solve; its backward fields fill in after
        ``loss.backward()``.

    Notes
    -----
    With a :class:`~odenet.LayerwiseField` the block integrates in one solve when the
    method is forward Euler (or another explicit fixed-step method whose stages all lie
    strictly inside the step) on a grid aligned with the block boundaries (``steps`` a
    multiple of the number of blocks). Otherwise it solves interval by interval, each
    block on its own: no step ever mixes two blocks, so RK4, implicit and adaptive methods
    integrate the piecewise-constant field exactly as the ODE it defines, and
    ``last_stats`` is the sum over the intervals.
    """

    def __init__(self, field: nn.Module, *, method: str = "dopri5", t1: Optional[float] = None, steps: Optional[int] = None,
                 rtol: float = 1e-3, atol: float = 1e-4, gradient: str = "direct", options: Optional[dict] = None):
        super().__init__()
        if not isinstance(field, nn.Module):
            raise TypeError(f"`field` must be an nn.Module with forward(t, x), got {type(field).__name__}")
        self.field = field
        self._cfg: Dict[str, Any] = {}
        self._stats: List[solvers.Stats] = []
        self._times: Dict[Any, torch.Tensor] = {}
        self._opts: dict = {}
        self._opts_for: Optional[dict] = None  # the _cfg that _opts was built for
        self._params: List[tuple] = []  # _parametrized(field), walked at _TREE_VERSION _params_at
        self._params_at = -1
        self._single: tuple = (None, None, 0, False)  # (_cfg, field, len(field), _single_solve_check(...))
        self._replay: Optional[_Replay] = None  # the latest plain solve, re-run by _forward
        if t1 is None:
            t1 = field.t1 if isinstance(field, LayerwiseField) else 1.0
        self.configure(method=method, t1=t1, steps=steps, rtol=rtol, atol=atol, gradient=gradient, options=options)

    def __getstate__(self):
        # the fast path's record holds the solve's function (maybe a closure, which cannot be
        # pickled) and is rebuilt by the next forward: copies and pickles go without it
        state = dict(super().__getstate__())
        state["_replay"] = None
        return state

    # ------------------------------------------------------------------ configuration

    def _validated(self, kw: Dict[str, Any]) -> Dict[str, Any]:
        unknown = sorted(set(kw) - set(SOLVER_KEYS))
        if unknown:
            raise TypeError(f"unknown solver setting(s) {unknown}; valid: {', '.join(SOLVER_KEYS)}")
        cfg = dict(self._cfg)
        cfg.update(kw)
        method = cfg["method"]
        if not isinstance(method, str) or method not in solvers.METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(sorted(solvers.METHODS))}")
        cfg["t1"] = _positive("t1", cfg["t1"])
        steps = cfg["steps"]
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"`steps` must be a positive int or None, got {steps!r}")
        cfg["rtol"] = _positive("rtol", cfg["rtol"])
        cfg["atol"] = _positive("atol", cfg["atol"], allow_zero=True)
        if cfg["gradient"] not in solvers.GRADIENT_MODES:
            raise ValueError(f"unknown gradient mode {cfg['gradient']!r}; valid: {', '.join(sorted(solvers.GRADIENT_MODES))}")
        options = cfg["options"]
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"`options` must be a dict or None, got {type(options).__name__}")
        cfg["options"] = dict(options) if options else None
        opts = cfg["options"] or {}
        cls = solvers.METHODS[method]
        if not cls.adaptive:
            own = "step_size" in opts or "grid_constructor" in opts
            if steps is None and not own:
                raise ValueError(
                    f"method {method!r} takes fixed steps: give `steps` (number of steps over [0, t1], "
                    f"e.g. steps=10) or options=dict(step_size=...)")
            if steps is not None and own:
                raise ValueError("give either `steps` or options['step_size'/'grid_constructor'], not both")
        if isinstance(self.field, LayerwiseField) and abs(cfg["t1"] - self.field.t1) > 1e-12 * self.field.t1:
            raise ValueError(f"ODEBlock t1={cfg['t1']} must equal the LayerwiseField's t1={self.field.t1}")
        if cls.implicit and not cls.adaptive:
            self._check_well_posed(cls, cfg, steps, opts)
        self._check_options(cfg, cls)
        return cfg

    @staticmethod
    def _check_options(cfg: Dict[str, Any], cls) -> None:
        """Validate ``options`` now (unknown keys, bad values) instead of at the first forward.

        A solve with a single output time builds the whole configuration (loop options, the
        method's own options such as ``root_finder``) and takes no step.
        """
        opts = dict(cfg["options"] or {})
        if not cls.adaptive and cfg["steps"] is not None:
            opts["step_size"] = cfg["t1"] / cfg["steps"]
        solvers.solve(lambda t, y: y, torch.zeros(1, dtype=torch.float64),
                      torch.zeros(1, dtype=torch.float64), method=cfg["method"], rtol=cfg["rtol"],
                      atol=cfg["atol"], options=opts)

    def _check_well_posed(self, cls, cfg: Dict[str, Any], steps: Optional[int], opts: Dict[str, Any]) -> None:
        """Refuse implicit fixed steps that a field's one-sided Lipschitz bound says may be ill posed.

        A field with ``one_sided_lipschitz = nu > 0`` (e.g. :class:`odenet.ParabolicConvField`)
        makes every implicit stage ``x = c + gamma h f(x)`` uniquely solvable when
        ``gamma h nu < 1``; beyond it the stage may have no or several solutions.
        """
        nu = self._field_bound()
        if nu <= 0:
            return
        if steps is not None:
            h = cfg["t1"] / steps
        elif isinstance(opts.get("step_size"), (int, float)):
            h = float(opts["step_size"])
        else:  # a grid_constructor: its steps are known only at the solve (see _checked_grid)
            return
        gamma = _implicit_gamma(cls)
        if gamma is None:
            return
        if gamma * h * nu >= 1:
            need = math.floor(gamma * cfg["t1"] * nu) + 1
            raise ValueError(
                f"method {cfg['method']!r} with step {h:g} is not guaranteed well posed on this field: its "
                f"one-sided Lipschitz bound is {nu:g} and the implicit stages need gamma*h*bound < 1 "
                f"(gamma={gamma:g}, got {gamma * h * nu:g}); use steps >= {need} or a field with a smaller "
                f"`expansion`")

    def configure(self, **kw) -> "ODEBlock":
        """Change any of ``method, t1, steps, rtol, atol, gradient, options`` in place.

        All settings are validated together before any is applied; weights are untouched.

        Returns
        -------
        ODEBlock
            ``self``, for chaining.
        """
        self._cfg = self._validated(kw)
        return self

    @contextlib.contextmanager
    def using(self, **kw) -> Iterator["ODEBlock"]:
        """Context manager: :meth:`configure` with ``kw`` inside, restore on exit.

        On exit the block gets back the *whole* configuration it had when the ``with``
        began: a :meth:`configure` call inside the ``with`` lasts only until its end. To
        change the configuration for good, call :meth:`configure` outside any ``using``.
        """
        saved = dict(self._cfg)
        self.configure(**kw)
        try:
            yield self
        finally:
            self._cfg = saved

    def solver_config(self) -> Dict[str, Any]:
        """The current solver configuration as a plain dict (a copy)."""
        cfg = dict(self._cfg)
        cfg["options"] = dict(cfg["options"]) if cfg["options"] else None
        return cfg

    # ------------------------------------------------------------------ statistics

    @property
    def last_stats(self) -> Optional[solvers.Stats]:
        """``solvers.Stats`` of the latest forward (summed over intervals if split)."""
        if not self._stats:
            return None
        return self._stats[0] if len(self._stats) == 1 else _sum_stats(self._stats)

    def _need_stats(self) -> solvers.Stats:
        st = self.last_stats
        if st is None:
            raise RuntimeError("no forward pass has run on this ODEBlock yet; call it on a batch first")
        return st

    @property
    def nfe_forward(self) -> int:
        """Vector-field evaluations of the latest forward solve."""
        return self._need_stats().n_f_evals

    @property
    def nfe_backward(self) -> int:
        """Vector-field evaluations plus vector-Jacobian products of the latest backward.

        Zero until ``backward`` has run through the latest forward's output (and for
        gradient modes where the solver reports no backward work).
        """
        st = self._need_stats()
        return st.n_f_evals_backward + st.n_vjp_evals

    # ------------------------------------------------------------------ solving

    def _time(self, a: float, b: float, device) -> torch.Tensor:
        key = (a, b, device)
        t = self._times.get(key)
        if t is None:
            t = torch.tensor([a, b], dtype=torch.float64, device=device)
            if len(self._times) > 256:
                self._times.clear()
            self._times[key] = t
        return t

    def _single_solve_ok(self, cls) -> bool:
        """Whether a LayerwiseField can be integrated in one solve without mixing blocks
        (remembered per configuration and field)."""
        cfg, field = self._cfg, self.field
        single = self._single
        if single[0] is cfg and single[1] is field and single[2] == len(field):
            return single[3]
        ok = self._single_solve_check(cls)
        self._single = (cfg, field, len(field), ok)
        return ok

    def _single_solve_check(self, cls) -> bool:
        cfg = self._cfg
        opts = cfg["options"] or {}
        return (not cls.adaptive and not cls.implicit and cfg["steps"] is not None
                and "grid_constructor" not in opts and cfg["steps"] % len(self.field) == 0
                and max(cls.stage_c) < 1.0)

    def _field_bound(self) -> float:
        """The largest one-sided Lipschitz bound the field (or its blocks) declares, else 0."""
        fields = list(self.field.blocks) if isinstance(self.field, LayerwiseField) else [self.field]
        bounds = [getattr(f, "one_sided_lipschitz", None) for f in fields]
        return max([float(b) for b in bounds if isinstance(b, (int, float)) and not isinstance(b, bool)],
                   default=0.0)

    def _checked_grid(self, gc, cls):
        """Wrap a ``grid_constructor`` so an implicit method's grid gets the well-posedness check."""
        nu, gamma, method = self._field_bound(), _implicit_gamma(cls), self._cfg["method"]
        if nu <= 0 or gamma is None:
            return gc

        def grid(func, y0, t):
            g = gc(func, y0, t)
            h = float(torch.as_tensor(g).detach().diff().abs().max()) if len(g) > 1 else 0.0
            if gamma * h * nu >= 1:
                raise ValueError(
                    f"method {method!r}: the grid_constructor's largest step {h:g} is not guaranteed "
                    f"well posed on this field: its one-sided Lipschitz bound is {nu:g} and the implicit "
                    f"stages need gamma*h*bound < 1 (gamma={gamma:g}, got {gamma * h * nu:g}); use steps "
                    f"shorter than {1 / (gamma * nu):g} or a field with a smaller `expansion`")
            return g

        return grid

    def _solve_options(self, cls) -> dict:
        """The ``options`` handed to ``solvers.solve``, built once per configuration.

        Rebuilt whenever ``_cfg`` is another dict (:meth:`configure` and :meth:`using`
        always install a new one); ``solvers.solve`` copies what it is given, so one dict
        serves every forward. An implicit method's ``grid_constructor`` is wrapped anew at
        each solve instead (:meth:`_checked_grid` reads the field's bound when it runs).
        """
        cfg = self._cfg
        if self._opts_for is cfg:
            return self._opts
        opts = dict(cfg["options"]) if cfg["options"] else {}
        if not cls.adaptive and cfg["steps"] is not None:
            opts["step_size"] = cfg["t1"] / cfg["steps"]
        # The block reads only the final state, so it checks that one itself (see _check_finite)
        # instead of letting the solver stack and scan every output.
        opts.setdefault("check_finite", False)
        self._opts, self._opts_for = opts, cfg
        return opts

    def _solve(self, func, module: nn.Module, x, a: float, b: float, cls):
        cfg = self._cfg
        opts = self._solve_options(cls)
        if cls.implicit and opts.get("grid_constructor") is not None:
            opts = dict(opts, grid_constructor=self._checked_grid(opts["grid_constructor"], cls))
        params = [p for p in module.parameters() if p.requires_grad] if cfg["gradient"] != "direct" else None
        # under torch.compile the times go in as Python floats: the tracer sees their values (no
        # host read of a tensor), and no traced tensor lands in the block's cache of times
        t = [a, b] if torch.compiler.is_compiling() else self._time(a, b, x.device)
        sol = solvers.solve(func, x, t, method=cfg["method"], rtol=cfg["rtol"],
                            atol=cfg["atol"], options=opts, gradient=cfg["gradient"], params=params)
        return sol

    def _check_finite(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Raise ``solvers.NonFiniteStateError`` if ``y`` holds NaN or inf (one host sync).

        ``isfinite(sum(y))`` is exact as a test for "all finite" except when a sum of finite
        values overflows, which the full test then rules out; it costs one reduction instead
        of a boolean copy of the state. A non-finite state at any step of a solve propagates
        to the final state, so checking the output is as strict as checking every output.
        """
        if self._cfg["options"] and self._cfg["options"].get("check_finite") is False:
            return y
        if torch.compiler.is_compiling():  # a host read; skipped when traced (solvers._compile)
            return y
        if math.isfinite(float(y.detach().sum())):
            return y
        with torch.no_grad():
            if bool(torch.isfinite(y).all()):
                return y
            if not bool(torch.isfinite(x).all()):
                raise ValueError("the ODEBlock's input contains NaN or inf; the initial state must be finite")
        cfg = self._cfg
        raise solvers.NonFiniteStateError(
            f"{solvers.Status.NON_FINITE.value} The state at t1={cfg['t1']:g} is non-finite "
            f"(method {cfg['method']!r}" + (f", steps={cfg['steps']})" if cfg["steps"] else ")"), t=cfg["t1"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Integrate from ``x`` at ``t = 0`` to ``t1`` and return the state (shape of ``x``).

        Raises
        ------
        solvers.SolverError
            A subclass naming the numerical failure (non-finite state, step-size
            underflow, too many steps, implicit solve not converging).
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"ODEBlock expects a floating-point tensor, got {type(x).__name__}"
                            + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
        if self._params_at != _TREE_VERSION[0]:
            # Walked again only after some module registered a submodule (a new
            # parametrisation always does). Removing one registers nothing, and then the
            # stale entries only make getattr below return the plain tensor: harmless.
            self._params, self._params_at = _parametrized(self.field), _TREE_VERSION[0]
        params = self._params
        if not params:
            return self._forward(x)
        # Parametrised weights (spectral norm) are computed once per forward instead of once
        # per field evaluation: cheaper, and the field stays the same function during the
        # solve (in training mode spectral norm refines its power iteration at every access,
        # which would hand an implicit method's root finder a moving target).
        with parametrize.cached():
            for module, name in params:  # fill the cache with grad enabled (graph-connected)
                getattr(module, name)
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        rec = self.__dict__.get("_replay")
        if (rec is not None and rec.cfg is self._cfg and rec.replay.matches_state(x)
                and not torch.compiler.is_compiling()):
            y = self._replayed(rec, x)
            if y is not None:
                return self._check_finite(x, y)
        x0 = x
        cls = solvers.METHODS[self._cfg["method"]]
        field = self.field
        if isinstance(field, LayerwiseField) and not self._single_solve_ok(cls):
            stats = []
            for k in range(len(field)):
                a, b = field.interval(k)
                piece = field.piece(k)
                sol = self._solve(piece, piece, x, a, b, cls)
                stats.append(sol.stats)
                x = sol.ys[-1]
            self._stats = stats
            return self._check_finite(x0, x)
        func = field.as_function() if isinstance(field, LayerwiseField) else field
        sol = self._solve(func, field, x, 0.0, self._cfg["t1"], cls)
        self.__dict__["_stats"] = [sol.stats]  # (a plain attribute: skips nn.Module.__setattr__)
        replay = getattr(sol, "_replay", None)
        self.__dict__["_replay"] = None if replay is None else _Replay(self._cfg, field, replay)
        return self._check_finite(x0, sol.ys[-1])

    def _replayed(self, rec: "_Replay", x: torch.Tensor) -> Optional[torch.Tensor]:
        """The remembered plain solve re-run from ``x`` (solvers._replay), or None when the
        field is no longer the function it recorded (then the caller solves afresh)."""
        field = self._modules["field"]
        if rec.field is not field:
            return None
        if rec.structure is not None:  # a layerwise field's blocks, called without the time lookup
            if field.structure() != rec.structure:
                return None
            direct = rec.direct
            y, stats = rec.replay.run(x, direct.calls if direct is not None and direct.usable() else rec.calls)
        else:
            func = field.as_function() if isinstance(field, LayerwiseField) else field
            if func is not rec.replay.func:
                return None
            y, stats = rec.replay.run(x)
        self.__dict__["_stats"] = [stats]
        return y

    def extra_repr(self) -> str:
        cfg = self._cfg
        s = f"method={cfg['method']!r}, t1={cfg['t1']}"
        if cfg["steps"] is not None:
            s += f", steps={cfg['steps']}"
        if solvers.METHODS[cfg["method"]].adaptive:
            s += f", rtol={cfg['rtol']:g}, atol={cfg['atol']:g}"
        s += f", gradient={cfg['gradient']!r}"
        if cfg["options"]:
            s += f", options={cfg['options']!r}"
        return s
