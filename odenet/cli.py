"""The ``odenet`` command line: ``odenet train``, ``odenet compare``, ``odenet diagnose`` and ``odenet timeseries``.

Run ``odenet --help`` (or ``python -m odenet --help``). Bad input (unknown names,
mismatched or corrupt checkpoints, ...) is reported in one line without a
traceback (set ``ODENET_DEBUG=1`` to see it) and exits with status 2; a numerical failure during ``odenet train`` exits with status 1.
``odenet compare`` reports a view whose training fails numerically in its table and in
``results.json`` (``failed``) and goes on with the others; ``--strict`` makes that exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ._io import check_out_dir
from .jobs._timeseries import LATENT_ODE_OPTIONS, latent_ode_problem

__all__ = ["main", "build_parser"]

_VIEWS = ("resnet", "implicit", "node")
_DATASETS = ("digits", "circles", "spirals")


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer ``>= minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1, "positive")
_nonneg_int = _int_at_least(0, "non-negative")


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative finite number, got {text!r}")
    return value


def _label_smoothing(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) (0: off), got {text!r}")
    return value


def _open_unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), e.g. 0.9, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _name_list(choices: Sequence[str]):
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(
                f"unknown name(s) {bad or [text]}; use a comma-separated list from {', '.join(choices)}")
        return names
    return parse


#: odenet.training.LR_SCHEDULES, repeated here so that parsing imports no torch (tests/test_cli.py checks they agree)
_LR_SCHEDULES = ("constant", "cosine", "onecycle")


def _lr_schedules(text: str):
    """``cosine`` (every model) or ``latent_ode=cosine,ode_rnn=constant`` (per model)."""
    if "=" not in text:
        if text.strip() not in _LR_SCHEDULES:
            raise argparse.ArgumentTypeError(f"unknown schedule {text!r}; choose from {', '.join(_LR_SCHEDULES)} "
                                             "or give MODEL=SCHEDULE pairs such as latent_ode=cosine,ode_rnn=constant")
        return text.strip()
    table = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        model, _, sched = (x.strip() for x in pair.partition("="))
        if model not in _SERIES_MODELS or sched not in _LR_SCHEDULES:
            raise argparse.ArgumentTypeError(
                f"bad MODEL=SCHEDULE pair {pair!r}: models {', '.join(_SERIES_MODELS)}; "
                f"schedules {', '.join(_LR_SCHEDULES)}")
        table[model] = sched
    return table


#: the Latent ODE settings ``--latent-ode`` takes, and their types: the job's own table
_LATENT_ODE_OPTIONS = LATENT_ODE_OPTIONS


def _latent_ode_options(text: str) -> dict:
    """``n_samples=3,kl_weight=0.1``: constructor settings of the Latent ODE (the job's rules)."""
    opts = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, value = (x.strip() for x in pair.partition("="))
        if key not in LATENT_ODE_OPTIONS or not eq:
            raise argparse.ArgumentTypeError(f"bad KEY=VALUE pair {pair!r}; keys {', '.join(LATENT_ODE_OPTIONS)}")
        kind = LATENT_ODE_OPTIONS[key]
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key} takes {'an integer' if kind is int else 'a number'}, "
                                             f"got {value!r}") from None
        problem = latent_ode_problem(key, v)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        opts[key] = v
    if not opts:
        raise argparse.ArgumentTypeError("give KEY=VALUE pairs, e.g. n_samples=3")
    return opts


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,0.05,0.1, got {text!r}") from None
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got {text!r}")
    return values


def _epsilon_list(text: str) -> list[float]:
    values = _float_list(text)
    if any(v > 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"FGSM sizes are fractions of the input range, so each must lie in [0, 1]; got {text!r} "
            "(e.g. 0,0.02,0.05,0.1)")
    return values


def _common(p: argparse.ArgumentParser, compare: bool = False) -> None:
    """The options ``train`` and ``compare`` share; ``compare`` has its own defaults (its help says them)."""
    d = dict(batch=32, lr="2e-2", width=16, expansion=0.0, sn="on", head="flatten", sched="onecycle",
                  ls=0.1, kin="1e-4") if compare \
        else dict(batch=64, lr="3e-3", width=32, expansion=2.0, sn="off", head="pool", sched="constant", ls=0.0,
                  kin="0: off")
    p.add_argument("--data", default="digits", choices=_DATASETS,
                   help="dataset (default: digits, scikit-learn's bundled 8x8 images)")
    p.add_argument("--epochs", type=_positive_int, help="number of epochs")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch"], help=f"batch size (default {d['batch']})")
    p.add_argument("--lr", type=_positive_float, default=float(d["lr"]),
                   help=f"Adam learning rate, the peak of --lr-schedule (default {d['lr']})")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    p.add_argument("--width", type=_positive_int, default=d["width"],
                   help=f"channels of the conv field / hidden units of the MLP field (default {d['width']})")
    p.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"),
                   help="where to train (default: auto = cuda if available)")
    p.add_argument("--limit-train", type=_positive_int, default=None,
                   help="use only the first N training samples")
    p.add_argument("--limit-test", type=_positive_int, default=None,
                   help="use only the first N test samples")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--field", default="parabolic", choices=("parabolic", "unconstrained"),
                   help="the vector field: parabolic (default; one-sided Lipschitz bound EXPANSION, so "
                        "backward Euler is well posed for steps h < 1/EXPANSION) or unconstrained")
    p.add_argument("--expansion", type=float, default=None,
                   help=f"the parabolic field's one-sided Lipschitz bound (default {d['expansion']})")
    p.add_argument("--spectral-norm", action=argparse.BooleanOptionalAction, default=None,
                   help=f"spectrally normalise the field's layers (bounds its Lipschitz constant; default {d['sn']})")
    p.add_argument("--head", choices=("pool", "flatten"), default=None,
                   help=f"image classifier head: pool (global average pool + linear) or flatten (default {d['head']})")
    p.add_argument("--lr-schedule", choices=_LR_SCHEDULES, default=None,
                   help=f"learning-rate schedule over all batches, --lr its peak (default {d['sched']})")
    p.add_argument("--label-smoothing", type=_label_smoothing, default=None,
                   help=f"label smoothing of the training loss, in [0, 1) (default {d['ls']})")
    p.add_argument("--kinetic", type=_nonneg_float, default=None,
                   help=f"weight of the kinetic-energy penalty int |f|^2 dt (default {d['kin']})")
    p.add_argument("--jacobian-reg", type=_nonneg_float, default=None,
                   help="weight of the Jacobian-Frobenius penalty int |df/dx|_F^2 dt (default 0: off)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``odenet``."""
    parser = argparse.ArgumentParser(
        prog="odenet",
        description="Train one vector field as a ResNet, an implicit ResNet or a Neural ODE.")
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,diagnose,stability,robustness,timeseries}")
    sub.required = True

    tr = sub.add_parser(
        "train", help="train one model view",
        description="Train one view of the shared field architecture. resnet = Euler with "
                    "fixed steps; implicit = backward Euler with a root finder; node = "
                    "dopri5 with the checkpointed adjoint. Runs under torchrun --nproc_per_node=N with "
                    "DistributedDataParallel.")
    tr.add_argument("--model", default="resnet", choices=_VIEWS, help="model view (default resnet)")
    _common(tr)
    tr.add_argument("--robust", nargs="?", const="explicit", default=None, metavar="FAMILY",
                    help="solver-robust training: half the batches under a solver drawn from FAMILY "
                         "(default family: explicit = euler/midpoint/rk4 at 2-8 steps)")
    lw = tr.add_argument_group("layerwise fields (an untied ResNet: one block of weights per time interval)")
    lw.add_argument("--layers", type=_positive_int, default=None,
                    help="blocks of the LayerwiseField (default 1: one field for all times); use --steps a "
                         "multiple of it for the Euler ResNet")
    lw.add_argument("--interpolation", choices=("constant", "linear"), default=None,
                    help="the blocks' weights between their start times: constant (default, piecewise-constant "
                         "field) or linear (continuous in time)")
    lw.add_argument("--layer-init", choices=("tied", "smooth"), default=None,
                    help="initialise the blocks as a smooth function of depth (Sander et al. 2022): tied (all "
                         "equal) or smooth (a cos/sin blend of two independent draws); default independent")
    lw.add_argument("--smoothness", type=_nonneg_float, default=None,
                    help="weight of the depth-smoothness penalty sum_k |theta_{k+1}-theta_k|^2 / h "
                         "(default 0: off; needs --layers > 1)")
    tr.set_defaults(epochs=5)
    tr.add_argument("--out", default="runs/train",
                    help="directory for metrics.csv, metrics.json, checkpoint.pt (default runs/train)")
    tr.add_argument("--resume", action="store_true",
                    help="continue from OUT/checkpoint.pt up to --epochs")
    tr.add_argument("--overwrite", action="store_true",
                    help="start afresh even if OUT already holds a checkpoint")
    tr.add_argument("--augment", type=_nonneg_int, default=0,
                    help="extra zero-initialised state channels (default 0)")
    tr.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (default 0)")
    g = tr.add_argument_group("solver overrides (default: the view's settings)")
    g.add_argument("--method", help="integration method, e.g. euler, rk4, dopri5, implicit_euler")
    g.add_argument("--steps", type=_positive_int, help="number of fixed steps over [0, t1]")
    g.add_argument("--rtol", type=_positive_float, help="relative tolerance (adaptive methods)")
    g.add_argument("--atol", type=_positive_float, help="absolute tolerance (adaptive methods)")
    g.add_argument("--gradient", choices=("direct", "adjoint", "checkpoint", "checkpointed_adjoint"),
                   help="how gradients are computed (the node view's default: checkpointed_adjoint)")
    g.add_argument("--root-finder", choices=("fixed_point", "anderson", "newton", "newton_krylov"),
                   help="root finder of implicit methods")

    cp = sub.add_parser(
        "compare", help="train the three views from one initialisation and compare them",
        description="Train the explicit ResNet (Euler), the implicit ResNet (backward Euler) "
                    "and the Neural ODE (dopri5 + checkpointed adjoint) from the same initial weights; "
                    "print one table (accuracy, time, function evaluations, memory, FGSM, "
                    "cross-solver accuracy) and write results.json and PNGs into --out.")
    _common(cp, compare=True)
    cp.set_defaults(epochs=None)
    cp.add_argument("--models", type=_name_list(_VIEWS), default=list(_VIEWS),
                    help="comma-separated views to train (default resnet,implicit,node)")
    cp.add_argument("--solvers", type=_name_list(_VIEWS), default=None,
                    help="comma-separated views every model is also evaluated under (default all)")
    cp.add_argument("--epsilons", type=_epsilon_list, default=None,
                    help="FGSM and PGD sizes as fractions of the input range (default 0,0.02,0.05,0.1)")
    cp.add_argument("--pgd-steps", type=_nonneg_int, default=10,
                    help="PGD steps at every non-zero epsilon (random start; default 10; 0 skips PGD)")
    cp.add_argument("--pgd-points", type=_nonneg_int, default=128,
                    help="size of the fixed test subset PGD attacks (default 128; 0 skips PGD)")
    cp.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    cp.add_argument("--resume", action="store_true",
                    help="continue an interrupted compare in OUT: every view resumes from its own "
                         "OUT/VIEW/checkpoint.pt (a finished view is only re-measured)")
    cp.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    cp.add_argument("--robust", action="store_true",
                    help="solver-robust training: half the batches of every view under a solver drawn from "
                         "the explicit family (euler/4, euler/8, midpoint/4, rk4/4); default: plain training")
    cp.add_argument("--strict", action="store_true",
                    help="exit with status 1 when a view's training fails numerically (default: "
                         "report the failure in the table and results.json and exit 0)")
    dg = sub.add_parser(
        "diagnose", help="is a trained model an ODE or a discrete ResNet?",
        description="Evaluate a trained checkpoint under a ladder of solvers (euler and rk4 at 2-32 "
                    "steps, dopri5 at decreasing tolerances, implicit Euler), report whether its "
                    "predictions converge as the step shrinks and with what empirical order, and end "
                    "in a verdict. Writes solver_robustness.json and .png into --out.")
    dg.add_argument("checkpoint", help="checkpoint.pt of an `odenet train` / `odenet compare` run")
    dg.add_argument("--out", required=True, help="output directory (created)")
    dg.add_argument("--max-samples", type=_positive_int, default=256,
                    help="test inputs used (default 256)")
    _add_stability(sub)
    _add_robustness(sub)
    _timeseries_parser(sub)
    return parser


def _add_stability(sub) -> None:
    """The ``odenet stability`` subcommand (argument parsing only)."""
    st = sub.add_parser(
        "stability", help="measure the stability claims of CLAIMS.md (A-H) and write a report",
        description="Measure stability functions and regions of every registered method, gradient flow "
                    "through depth, non-expansive implicit steps, norm-preserving dynamics, error "
                    "propagation, Lyapunov exponents, gating and normalisation; write results.json, "
                    "claims.md and PNGs into --out.")
    st.add_argument("--out", required=True, help="output directory (created)")
    st.add_argument("--claims", default=None,
                    help="comma-separated claim IDs to measure, e.g. A1,B2 (default: all)")
    st.add_argument("--full", action="store_true", help="long versions (Lorenz at T=1e4, more samples)")
    st.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    st.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_stability(args: argparse.Namespace) -> int:
    from .jobs._stability import StabilityConfig, stability

    check_out_dir(args.out)  # before any work
    stability(StabilityConfig(out=args.out, claims=args.claims, full=args.full, seed=args.seed,
                              quiet=args.quiet))
    return 0


# ----------------------------------------------------------------------------- odenet robustness

def _add_robustness(sub) -> None:
    rb = sub.add_parser(
        "robustness", help="attack the three views (FGSM, PGD, transfer, Square, noise); claims C2, C3, H1",
        description="Train the three views of one field and their variants (implicit nu in -1, 0, 2; spectral "
                    "norm on/off) over several seeds, or load them from `odenet compare` runs, attack them on "
                    "one fixed test subset, run the protocol's sanity checks and measure claims C2, C3 and H1; "
                    "write results.json, robustness.md, claims.md and PNGs into --out.")
    rb.add_argument("--out", required=True, help="output directory (created; must not be a file)")
    rb.add_argument("--quick", action="store_true", help="tiny budgets for a smoke test (not protocol-conformant)")
    rb.add_argument("--models-from", metavar="DIR", help="load the models from an `odenet compare` --out "
                    "directory (or a directory of such runs) instead of training")
    rb.add_argument("--runs", type=_positive_int, default=None, help="independent training runs (default 3)")
    rb.add_argument("--epsilons", type=_float_list, default=None,
                    help="comma-separated radii as fractions of the input range (default 0,0.01,0.02,0.05,0.1,0.2,0.3)")
    rb.add_argument("--variants", default=None, help="comma-separated variants (default all: resnet, implicit, "
                    "node, implicit_nu0, implicit_nu-1, resnet_sn)")
    rb.add_argument("--seed", type=_nonneg_int, default=0, help="first seed (default 0)")
    rb.add_argument("--workers", type=_positive_int, default=None,
                    help="processes training and attacking the models in parallel (default 2; 1: this process "
                         "only; the numbers do not depend on it)")
    rb.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="device (default cpu)")
    rb.add_argument("--quiet", action="store_true", help="print only the final table")
    rb.add_argument("--no-plots", action="store_true", help="skip the PNGs")


def _run_robustness(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    from .jobs._robustness import RobustnessConfig, robustness

    kw = dict(out=args.out, quick=args.quick, models_from=args.models_from, seed=args.seed, device=args.device,
              quiet=args.quiet, plots=not args.no_plots)
    if args.runs is not None:
        kw["runs"] = args.runs
    if args.workers is not None:
        kw["workers"] = args.workers
    if args.epsilons is not None:
        kw["epsilons"] = tuple(args.epsilons)
    if args.variants is not None:
        kw["variants"] = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    robustness(RobustnessConfig(**kw))
    return 0


_SERIES_MODELS = ("ode_rnn", "latent_ode", "gru_ode", "ncde", "gru_dt", "gru_d")


def _timeseries_parser(sub) -> None:
    ts = sub.add_parser(
        "timeseries", help="train time-series models on irregular series with dropped observations",
        description="Train ODE-RNN, Latent ODE, GRU-ODE, Neural CDE and the GRU-dt / GRU-D baselines on "
                    "irregularly sampled series (the UEA/UCR archive bundled in sktime, periodic sines, "
                    "spirals; no downloads) and write a table, results.json and PNGs into --out.")
    ts.add_argument("--data", type=lambda t: [n.strip() for n in t.split(",") if n.strip()],
                    default=["JapaneseVowels", "sines"],
                    help="comma-separated data sets: any bundled UEA/UCR classification set, sines "
                         "(extrapolation), sines_interp, spirals (default JapaneseVowels,sines)")
    ts.add_argument("--drop", type=_float_list, default=[0.3],
                    help="comma-separated fractions of observations dropped per series (default 0.3)")
    ts.add_argument("--models", type=_name_list(_SERIES_MODELS), default=list(_SERIES_MODELS),
                    help="comma-separated models (default all: " + ",".join(_SERIES_MODELS) + ")")
    ts.add_argument("--epochs", type=_positive_int, default=None,
                    help="epochs of every run (default 20 for classification, 5 for sines)")
    ts.add_argument("--batch-size", type=_positive_int, default=None,
                    help="batch size (default 32 for classification, 64 for sines)")
    ts.add_argument("--lr", type=_positive_float, default=1e-2, help="Adam learning rate (default 1e-2)")
    ts.add_argument("--lr-schedule", type=_lr_schedules, default="constant",
                    help="learning-rate schedule: constant, cosine or onecycle for every model, or per model "
                         "as MODEL=SCHEDULE pairs, e.g. latent_ode=cosine (others constant; default constant)")
    ts.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    ts.add_argument("--weight-decay", type=_nonneg_float, default=0.0,
                    help="Adam's L2 weight decay (default 0)")
    ts.add_argument("--ema-decay", type=_open_unit_float, default=None,
                    help="evaluate an exponential moving average of the weights with this decay per "
                         "optimiser step, in (0, 1), e.g. 0.9 (default: the last weights)")
    ts.add_argument("--latent-ode", type=_latent_ode_options, default={}, metavar="KEY=VALUE[,...]",
                    help="settings of the Latent ODE only: " + ", ".join(LATENT_ODE_OPTIONS) +
                         ", e.g. n_samples=3 (default: the model's defaults)")
    ts.add_argument("--hidden", type=_positive_int, default=32, help="hidden state size (default 32)")
    ts.add_argument("--time-scale", type=_positive_float, default=0.1,
                    help="time between two samples of a UEA/UCR series (default 0.1)")
    ts.add_argument("--n-sines", type=_positive_int, default=1000, help="periodic-sines series (default 1000)")
    ts.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="device (default cpu)")
    ts.add_argument("--limit-train", type=_positive_int, default=None, help="use only the first N training series")
    ts.add_argument("--limit-test", type=_positive_int, default=None, help="use only the first N test series")
    ts.add_argument("--out", required=True, help="output directory")
    ts.add_argument("--quiet", action="store_true", help="print only the final table")
    ts.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    g = ts.add_argument_group("solver overrides of the ODE models (default rk4, one step per gap)")
    g.add_argument("--method", help="integration method, e.g. euler, rk4, dopri5")
    g.add_argument("--steps", type=_positive_int, help="fixed steps per gap between observations")
    g.add_argument("--rtol", type=_positive_float, help="relative tolerance (adaptive methods)")
    g.add_argument("--atol", type=_positive_float, help="absolute tolerance (adaptive methods)")
    g.add_argument("--gradient", choices=("direct", "adjoint", "checkpoint", "checkpointed_adjoint"), help="how gradients are computed")


def _run_timeseries(args: argparse.Namespace) -> int:
    from .jobs._timeseries import TimeseriesConfig, timeseries

    check_out_dir(args.out)  # before any work
    if any(not r < 1 for r in args.drop):
        raise ValueError(f"--drop rates must lie in [0, 1), got {args.drop}")
    report = timeseries(TimeseriesConfig(
        data=args.data, drop=args.drop, models=args.models, epochs=args.epochs,
        **({"batch_size": args.batch_size, "batch_size_regression": args.batch_size} if args.batch_size else {}),
        lr=args.lr, lr_schedule=args.lr_schedule, seed=args.seed, hidden=args.hidden, n_sines=args.n_sines,
        time_scale=args.time_scale, weight_decay=args.weight_decay, ema_decay=args.ema_decay,
        latent_ode=args.latent_ode, device=args.device, out=args.out,
        quiet=args.quiet, plots=not args.no_plots, limit_train=args.limit_train, limit_test=args.limit_test,
        method=args.method, steps=args.steps, rtol=args.rtol, atol=args.atol, gradient=args.gradient))
    if args.quiet:
        print(report["table"])
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from .training._run import TrainConfig, train

    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other (--resume continues the run "
                         "in --out, --overwrite discards it); pass one of them")

    cfg = TrainConfig(model=args.model, data=args.data, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      seed=args.seed, width=args.width, augment=args.augment, spectral_norm=bool(args.spectral_norm),
                      field=args.field, expansion=args.expansion, out=args.out,
                      device=args.device, resume=args.resume, overwrite=args.overwrite,
                      quiet=args.quiet, limit_train=args.limit_train, limit_test=args.limit_test,
                      method=args.method, steps=args.steps, rtol=args.rtol, atol=args.atol,
                      gradient=args.gradient, root_finder=args.root_finder,
                      **_training_options(args), **_layerwise_options(args), robust=args.robust)
    result = train(cfg)
    if not args.quiet and result.metrics and _is_main_process():
        last = result.metrics[-1]
        print(f"done: test accuracy {100 * last['test_acc']:.2f}% after {last['epoch']} epoch(s); "
              f"outputs in {result.out}")
    return 0


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _training_options(args: argparse.Namespace) -> dict:
    """The head / schedule / regularisation flags that were given (the config's defaults otherwise)."""
    names = {"head": "head", "lr_schedule": "lr_schedule", "kinetic": "kinetic", "jacobian_reg": "jacobian_reg",
             "label_smoothing": "label_smoothing"}
    return {k: getattr(args, a) for k, a in names.items() if getattr(args, a, None) is not None}


def _layerwise_options(args: argparse.Namespace) -> dict:
    """``odenet train``'s layerwise-field flags that were given (the config's defaults otherwise)."""
    names = ("layers", "interpolation", "layer_init", "smoothness")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _run_diagnose(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._io import check_out_dir, load_checkpoint, write_json
    from .analysis import check_solver_robustness
    from .data._classification import load_dataset
    from .training._run import load_model

    out = check_out_dir(args.out)
    ckpt = load_checkpoint(args.checkpoint)
    run = ckpt.get("run_config") or {}
    name = (ckpt.get("data") or {}).get("name") or run.get("data")
    if not name:
        raise ValueError(f"checkpoint {args.checkpoint} does not say which data set it was trained on")
    data = load_dataset(name, seed=int(run.get("seed", 0)), limit_train=run.get("limit_train"),
                        limit_test=run.get("limit_test"))
    model = load_model(args.checkpoint)
    report = check_solver_robustness(model, data, max_samples=args.max_samples, out=str(out))
    write_json(Path(out) / "solver_robustness.json", report.as_dict())
    print(report.table())
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from .jobs._compare import CompareConfig, compare

    kw = dict(data=args.data, models=args.models, solvers=args.solvers, batch_size=args.batch_size,
              lr=args.lr, seed=args.seed, width=args.width, limit_train=args.limit_train,
              limit_test=args.limit_test, device=args.device, out=args.out, quiet=args.quiet,
              plots=not args.no_plots, field=args.field,
              resume=args.resume, plain=not args.robust, pgd_steps=args.pgd_steps,
              pgd_points=args.pgd_points, **_training_options(args))
    for key in ("spectral_norm", "expansion"):  # given: passed on; else the config's default
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.epochs is not None:
        kw["epochs"] = args.epochs
    if args.epsilons is not None:
        kw["epsilons"] = args.epsilons
    report = compare(CompareConfig(**kw))
    if report.get("failed"):
        print(f"odenet compare: training failed for {', '.join(report['failed'])} "
              "(see the notes under the table and `failed` in results.json)", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``odenet`` and ``python -m odenet``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ._io import CheckpointError
    from .training._loop import TrainingError

    try:
        import solvers

        numeric_errors: tuple[type, ...] = (TrainingError, solvers.SolverError)
    except (ImportError, AttributeError):  # pragma: no cover
        numeric_errors = (TrainingError,)
    try:
        if args.command == "train":
            return _run_train(args)
        if args.command == "stability":
            return _run_stability(args)
        if args.command == "robustness":
            return _run_robustness(args)
        if args.command == "timeseries":
            return _run_timeseries(args)
        if args.command == "diagnose":
            return _run_diagnose(args)
        return _run_compare(args)
    except (ValueError, TypeError, CheckpointError) as exc:
        if os.environ.get("ODENET_DEBUG"):
            raise
        print(f"odenet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except numeric_errors as exc:
        print(f"odenet {args.command}: numerical failure: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"odenet {args.command}: interrupted; rerun with --resume to continue from the "
              "last checkpoint" if args.command == "train" else
              f"odenet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
