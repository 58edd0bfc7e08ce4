"""Every error path of the explicit core: bad input raises ValueError/TypeError naming the
argument; numerical failure raises a SolverError subclass (a RuntimeError) whose message
carries the time and a hint, or comes back as a status with ``raise_on_failure=False``."""

from __future__ import annotations

import math

import pytest
import torch

import solvers

F64 = torch.float64
Y0 = torch.tensor([1.0, 0.0], dtype=F64)
T = torch.tensor([0.0, 1.0], dtype=F64)


def rot(t, y):
    return torch.stack([y[1], -y[0]])


# --------------------------------------------------------------------------- bad input: t


@pytest.mark.parametrize(
    "t, exc, pattern",
    [
        (torch.zeros(2, 2, 2, dtype=F64), ValueError, "`t` must be 1-D"),
        (torch.tensor([0.0, 1.0, 0.5], dtype=F64), ValueError, "strictly increasing or strictly decreasing"),
        (torch.tensor([0.0, 1.0, 1.0], dtype=F64), ValueError, "no repeats"),
        (torch.tensor([0, 1]), TypeError, "`t` must be a floating-point tensor"),
        (torch.tensor([0.0, math.nan], dtype=F64), ValueError, "`t` contains NaN or inf"),
        (torch.tensor([0.0, math.inf], dtype=F64), ValueError, "`t` contains NaN or inf"),
        (torch.tensor([], dtype=F64), ValueError, "at least one time"),
        ("0 to 1", TypeError, "`t` must be a 1-D torch.Tensor"),
    ],
)
def test_bad_t(t, exc, pattern):
    with pytest.raises(exc, match=pattern):
        solvers.odeint(rot, Y0, t)


# --------------------------------------------------------------------------- bad input: y0


@pytest.mark.parametrize(
    "y0, exc, pattern",
    [
        (torch.tensor([1, 0]), TypeError, r"`y0` must be a floating-point or complex tensor.*\.float\(\)"),
        ([1.0, 0.0], TypeError, "`y0` must be a torch.Tensor or a non-empty tuple of tensors, got list"),
        ((), TypeError, "`y0` must be a torch.Tensor"),
        ((torch.ones(2, dtype=F64), torch.ones(2, dtype=torch.float32)), TypeError, "share one dtype"),
        ((torch.ones(2, dtype=F64), torch.ones(2, dtype=torch.int64)), TypeError, r"`y0\[1\]` must be a floating-point"),
    ],
)
def test_bad_y0_type(y0, exc, pattern):
    with pytest.raises(exc, match=pattern):
        solvers.odeint(rot, y0, T)


@pytest.mark.parametrize("method, options", [("euler", dict(step_size=0.1)), ("rk4", None), ("dopri5", None), ("dopri5", dict(first_step=0.1))])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_y0(method, options, bad):
    y0 = torch.tensor([1.0, bad], dtype=F64)
    with pytest.raises(ValueError, match="`y0` contains NaN or inf"):
        solvers.odeint(rot, y0, T, method=method, options=options)


# --------------------------------------------------------------------------- bad vector fields


@pytest.mark.parametrize("method", ["euler", "dopri5"])
def test_field_wrong_shape(method):
    with pytest.raises(ValueError, match=r"returned shape \(3,\) for a state of shape \(2,\)"):
        solvers.odeint(lambda t, y: torch.zeros(3, dtype=F64), Y0, T, method=method)


@pytest.mark.parametrize("method", ["euler", "dopri5"])
def test_field_wrong_dtype(method):
    with pytest.raises(TypeError, match=r"returned dtype torch.float32 for a state of dtype torch.float64.*\.to\(y\.dtype\)"):
        solvers.odeint(lambda t, y: y.float(), Y0, T, method=method)


def test_field_not_a_tensor():
    with pytest.raises(TypeError, match="must return a tensor"):
        solvers.odeint(lambda t, y: [1.0, 2.0], Y0, T)


def test_field_wrong_tuple():
    y0 = (torch.ones(2, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(TypeError, match="tuple of 2 tensors"):
        solvers.odeint(lambda t, s: s[0], y0, T)
    with pytest.raises(ValueError, match=r"state component 1 of shape \(3,\)"):
        solvers.odeint(lambda t, s: (s[0], s[0]), y0, T)


def test_func_not_callable():
    with pytest.raises(TypeError, match="`func` must be callable"):
        solvers.odeint("rot", Y0, T)


# --------------------------------------------------------------------------- bad method / options


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown method 'dopri6'") as info:
        solvers.odeint(rot, Y0, T, method="dopri6")
    for name in ("euler", "rk4", "dopri5", "tsit5", "dopri8"):
        assert name in str(info.value)
    with pytest.raises(TypeError, match="`method` must be a method name"):
        solvers.odeint(rot, Y0, T, method=5)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="unknown option `stepsize`") as info:
        solvers.odeint(rot, Y0, T, method="euler", options=dict(stepsize=0.1))
    assert "step_size" in str(info.value)  # lists the valid ones


def test_fixed_step_option_to_adaptive_method():
    with pytest.raises(ValueError, match="`step_size` applies only to fixed-step methods"):
        solvers.odeint(rot, Y0, T, method="dopri5", options=dict(step_size=0.1))
    with pytest.raises(ValueError, match="`first_step` applies only to adaptive methods"):
        solvers.odeint(rot, Y0, T, method="rk4", options=dict(first_step=0.1))


@pytest.mark.parametrize(
    "options, exc, pattern",
    [
        (dict(first_step=-0.1), ValueError, "`first_step` must be positive"),
        (dict(first_step="big"), TypeError, "`first_step` must be a number"),
        (dict(min_step=0.5, max_step=0.1), ValueError, "`min_step`.*must not exceed `max_step`"),
        (dict(max_num_steps=0), ValueError, "`max_num_steps` must be a positive int"),
        (dict(max_num_steps=2.5), ValueError, "`max_num_steps` must be a positive int"),
        (dict(norm="rms"), TypeError, "`norm` must be callable"),
        (dict(controller="pid"), ValueError, "`controller` must be 'i', 'pi'"),
        (dict(safety=1.5), ValueError, r"`safety` must be in \(0, 1\]"),
    ],
)
def test_bad_adaptive_options(options, exc, pattern):
    with pytest.raises(exc, match=pattern):
        solvers.odeint(rot, Y0, T, method="dopri5", options=options)


@pytest.mark.parametrize(
    "options, exc, pattern",
    [
        (dict(step_size=0.0), ValueError, "`step_size` must be positive"),
        (dict(interp="quadratic"), ValueError, "`interp` must be 'linear' or 'cubic'"),
        (dict(grid_constructor=3), TypeError, "`grid_constructor` must be callable"),
        (dict(grid_constructor=lambda f, y, t: torch.tensor([0.0, 0.5], dtype=F64)), ValueError, "grid from t\\[0\\]"),
        (dict(grid_constructor=lambda f, y, t: torch.tensor([0.0, 0.7, 0.5, 1.0], dtype=F64)), ValueError, "strictly increasing grid"),
    ],
)
def test_bad_fixed_options(options, exc, pattern):
    with pytest.raises(exc, match=pattern):
        solvers.odeint(rot, Y0, T, method="rk4", options=options)


@pytest.mark.parametrize(
    "kw, exc, pattern",
    [
        (dict(rtol=-1e-3), ValueError, "`rtol` must be finite and non-negative"),
        (dict(atol=math.nan), ValueError, "`atol` must be finite and non-negative"),
        (dict(rtol="1e-3"), TypeError, "`rtol` must be a float or a tensor"),
        (dict(atol=None), TypeError, "`atol` must be a float or a tensor"),
        (dict(rtol=torch.ones(3) * 1e-3), ValueError, r"`rtol` of shape \(3,\) does not broadcast"),
        (dict(atol=torch.ones(4, 2) * 1e-3), ValueError, "would enlarge the state shape"),
        (dict(atol=torch.tensor([1e-3, -1.0])), ValueError, "`atol` must be finite and non-negative"),
        (dict(rtol=torch.tensor([1e-3, 1e-3], requires_grad=True)), ValueError, "must not require grad"),
    ],
)
def test_bad_tolerances(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        solvers.odeint(rot, Y0, T, method="dopri5", **kw)


def test_bad_solve_arguments():
    with pytest.raises(ValueError, match="unknown gradient mode 'magic'"):
        solvers.solve(rot, Y0, T, gradient="magic")
    with pytest.raises(TypeError, match="`raise_on_failure` must be a bool"):
        solvers.solve(rot, Y0, T, raise_on_failure=1)


# --------------------------------------------------------------------------- numerical failure


def square(t, y):  # y(t) = 1 / (1 - t): blows up at t = 1
    return y * y


def test_exception_hierarchy():
    for cls in (solvers.NonFiniteStateError, solvers.StepSizeUnderflowError, solvers.MaxStepsError, solvers.RootFinderError):
        assert issubclass(cls, solvers.SolverError) and issubclass(cls, RuntimeError)
        assert cls.status is not None and cls.status.value  # the hint


@pytest.mark.parametrize("method", ["euler", "rk4", "midpoint"])
def test_blow_up_fixed_step_raises_non_finite(method):
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    with pytest.raises(solvers.NonFiniteStateError, match=r"smaller `step_size`.*Failed at t=2.*last finite output at t=0.5") as info:
        solvers.odeint(square, torch.ones(1, dtype=F64), t, method=method, options=dict(step_size=0.01))
    assert isinstance(info.value, RuntimeError) and info.value.t == 2.0
    partial = info.value.solution
    assert partial.status is solvers.Status.NON_FINITE and partial.ys.shape == (2, 1)


def test_blow_up_partial_solution_without_raising():
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    sol = solvers.solve(square, torch.ones(1, dtype=F64), t, method="euler", options=dict(step_size=0.01), raise_on_failure=False)
    assert sol.status is solvers.Status.NON_FINITE and not sol.success
    assert sol.t_fail == 2.0 and "t=2" in sol.message
    torch.testing.assert_close(sol.ts, t[:2])
    assert sol.ys.shape == (2, 1) and bool(torch.isfinite(sol.ys).all())
    # y(0.5) = 2 for the exact solution; Euler with h=0.01 is close
    assert abs(float(sol.ys[1, 0]) - 2.0) < 0.05


def test_blow_up_in_decreasing_time_reports_the_user_time():
    # y' = -y^2 backwards from t=0: y(t) = 1 / (1 + t) blows up at t = -1
    t = torch.tensor([0.0, -0.5, -2.0], dtype=F64)
    sol = solvers.solve(lambda t, y: -y * y, torch.ones(1, dtype=F64), t, method="rk4", options=dict(step_size=0.01), raise_on_failure=False)
    assert sol.status is solvers.Status.NON_FINITE and sol.t_fail == -2.0
    assert abs(float(sol.ys[1, 0]) - 2.0) < 1e-6


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_field_turning_nan_mid_solve_adaptive(method):
    def f(t, y):
        return torch.where(t < 0.6, -y, torch.full_like(y, math.nan))

    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    with pytest.raises(solvers.NonFiniteStateError, match=r"non-finite.*Failed at t=0\.") as info:
        solvers.odeint(f, torch.ones(1, dtype=F64), t, method=method)
    assert 0.5 <= info.value.t <= 0.6
    sol = info.value.solution
    assert sol.ys.shape == (2, 1)
    assert abs(float(sol.ys[1, 0]) - math.exp(-0.5)) < 1e-6


def test_min_step_too_large_raises_underflow():
    with pytest.raises(solvers.StepSizeUnderflowError, match=r"fell below `min_step`.*may be stiff.*a step of min_step=0\.5 was rejected at t=0") as info:
        solvers.odeint(rot, Y0, torch.tensor([0.0, 4.0], dtype=F64), method="dopri5", rtol=1e-10, atol=1e-10, options=dict(min_step=0.5))
    assert info.value.t == 0.0
    assert "Failed at t=0" in str(info.value)


def test_singular_problem_raises_underflow():
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    with pytest.raises(solvers.StepSizeUnderflowError, match="singular") as info:
        # max_num_steps only guards against an endless loop; ~330 steps reach the singularity
        solvers.odeint(square, torch.ones(1, dtype=F64), t, method="dopri5", options=dict(max_num_steps=3000))
    assert abs(info.value.t - 1.0) < 1e-5
    assert info.value.solution.ys.shape == (2, 1)


@pytest.mark.parametrize("method, options", [("dopri5", dict(max_num_steps=5)), ("rk4", dict(step_size=0.01, max_num_steps=5))])
def test_max_num_steps(method, options):
    with pytest.raises(solvers.MaxStepsError, match="Try increasing `max_num_steps`") as info:
        solvers.odeint(rot, Y0, torch.tensor([0.0, 0.5, 10.0], dtype=F64), method=method, options=options)
    assert "Try increasing `max_num_steps`" in str(info.value)
    sol = solvers.solve(rot, Y0, torch.tensor([0.0, 0.5, 10.0], dtype=F64), method=method, options=options, raise_on_failure=False)
    assert sol.status is solvers.Status.MAX_STEPS and sol.t_fail is not None
    if method == "dopri5":
        assert sol.stats.n_steps == 5
