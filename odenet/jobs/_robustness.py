"""The ``odenet robustness`` job: the three views of one field under the robustness protocol.

The pipeline (CLAIMS.md, "Robustness protocol"):

1. **config**: :class:`RobustnessConfig` (``quick=True`` shrinks every budget for a smoke test);
2. **data**: the digits, one split, one fixed test subset (the first ``n_test`` test points);
3. **models**: for each of ``runs`` seeds, every variant of :data:`VARIANTS` trained with the
   public training API (or loaded from ``odenet compare`` runs with ``models_from``);
4. **attacks**: :func:`odenet.robustness.attack_suite` on each model (FGSM, PGD through the
   evaluation solver, PGD transferred from an rk4 surrogate, Square, Gaussian noise);
5. **sanity checks** per run, a failing run marked invalid;
6. **claims** C2, C3 and H1 as :class:`~odenet.jobs.Claim` records;
7. **report**: ``results.json`` (with ``claims``), ``robustness.md`` and PNGs.

A view that fails numerically (``SolverError``, ``TrainingError``) in training or under
an attack is reported under ``failed`` and the job goes on.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

import solvers

from ..data._classification import load_dataset
from .._io import atomic_write_text
from ..robustness._suite import ADVERSARIAL, ATTACKS, AttackSettings, attack_suite
from ..training._loop import LR_SCHEDULES, TrainingError, fit
from ..training._robust import DynamicsRegularizer
from ..training._tasks import ClassificationTask, check_label_smoothing
from ..training._run import load_model
from ..training._runtime import resolve_device, set_seed
from ..training._views import VIEWS, build_view_model
from ._claims import claims_table, write_claims_report
from ._robustness_checks import claim_c2, claim_c3, claim_h1, contraction_ratios, sanity_checks

__all__ = ["RobustnessConfig", "robustness", "VARIANTS", "PROTOCOL_EPSILONS"]

#: The protocol's epsilon grid (fractions of the raw input range).
PROTOCOL_EPSILONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)

#: Model variants: (view, parabolic expansion nu, spectral norm). ``resnet``, ``implicit``
#: and ``node`` are the three views of one field (nu = 2, the project default); the
#: implicit variants with nu in {0, -1} serve C3 and C2, ``resnet_sn`` H1.
VARIANTS = {
    "resnet": ("resnet", 2.0, False),
    "implicit": ("implicit", 2.0, False),
    "node": ("node", 2.0, False),
    "implicit_nu0": ("implicit", 0.0, False),
    "implicit_nu-1": ("implicit", -1.0, False),
    "resnet_sn": ("resnet", 2.0, True),
}

_QUICK = dict(runs=2, width=4, epochs=1, limit_train=300, n_test=24, epsilons=(0.0, 0.05, 0.1),
              pgd_steps=10, square_queries=20, square_epsilons=(0.05, 0.1))


@dataclass
class RobustnessConfig:
    """Settings of :func:`robustness` (and of ``odenet robustness``).

    Attributes
    ----------
    out : str
        Output directory.
    runs : int
        Independent training runs (seeds ``seed, seed+1, ...``); the protocol asks >= 3.
    seed : int
        First model seed; also the seed of the data split (one split for all runs).
    epsilons : sequence of float
        Attack radii / noise levels, fractions of the raw input range, in [0, 1].
    variants : sequence of str
        Names from :data:`VARIANTS`.
    width, epochs, lr, batch_size, limit_train : training settings (shared by all variants).
    lr_schedule, label_smoothing, kinetic, head : training recipe of ``odenet compare``
        (one-cycle schedule with peak ``lr``, label smoothing 0.1, kinetic-energy penalty
        1e-4, flatten head; see :class:`~odenet.jobs.CompareConfig`): with it every variant
        reaches >= 92 % clean accuracy in 3 epochs on 800 digits, so the attack numbers
        are not those of near-chance models.
    n_test : int
        Size of the fixed test subset every model is attacked on.
    pgd_steps, square_queries, square_epsilons : attack budgets (see
        :class:`~odenet.robustness.AttackSettings`).
    claim_eps : (float, float)
        The epsilons of H1 (0.05) and of C2/C3 (0.1).
    models_from : str, optional
        Load the models from an ``odenet compare`` output directory (or a directory of
        them, one per run) instead of training.
    workers : int
        Processes that train and attack the models in parallel (default 2, the machine the
        budget is set for has 2 cores; 1: everything in this process). Each model is one task
        (train or load, attack, sanity checks) seeded on its own, so the results do not
        depend on ``workers``; each worker runs ``max(1, torch.get_num_threads() // workers)``
        threads.
    quick : bool
        Shrink every budget (CI smoke test; not protocol-conformant, flagged in results).
    """

    out: str = "runs/robustness"
    runs: int = 3
    seed: int = 0
    epsilons: Sequence[float] = PROTOCOL_EPSILONS
    variants: Sequence[str] = tuple(VARIANTS)
    width: int = 8
    epochs: int = 3
    lr: float = 2e-2
    batch_size: int = 32
    limit_train: int | None = 800
    lr_schedule: str = "onecycle"
    label_smoothing: float = 0.1
    kinetic: float = 1e-4
    head: str = "flatten"
    n_test: int = 64
    pgd_steps: int = 40
    square_queries: int = 100
    square_epsilons: Sequence[float] | None = (0.05, 0.1)
    claim_eps: tuple = (0.05, 0.1)
    models_from: str | None = None
    workers: int = 2
    device: str = "cpu"
    quiet: bool = False
    plots: bool = True
    quick: bool = False

    def resolved(self) -> "RobustnessConfig":
        """A validated copy with the ``quick`` budgets applied."""
        cfg = RobustnessConfig(**{**asdict(self), **(_QUICK if self.quick else {})})
        if self.quick:  # explicit non-default choices still win over the quick budgets
            for k in _QUICK:
                if getattr(self, k) != getattr(RobustnessConfig, k, None):
                    setattr(cfg, k, getattr(self, k))
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        for name in ("runs", "width", "epochs", "batch_size", "n_test", "pgd_steps", "square_queries", "workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        check_label_smoothing(self.label_smoothing)
        if isinstance(self.kinetic, bool) or not isinstance(self.kinetic, (int, float)) or not self.kinetic >= 0:
            raise ValueError(f"kinetic must be a non-negative number (0: off), got {self.kinetic!r}")
        if self.head not in ("pool", "flatten"):
            raise ValueError(f"head must be 'pool' or 'flatten', got {self.head!r}")
        if isinstance(self.variants, str) or not self.variants:
            raise ValueError(f"variants must be a non-empty list of names from {', '.join(VARIANTS)}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
        eps = list(self.epsilons)
        if not eps or any(isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e <= 1 for e in eps):
            raise ValueError(f"epsilons must be fractions of the input range in [0, 1], got {eps!r}")
        if sorted(set(eps)) != sorted(eps):
            raise ValueError(f"epsilons lists a value twice: {eps!r}")
        if self.models_from is not None and not Path(self.models_from).is_dir():
            raise ValueError(f"models_from must be an `odenet compare` output directory, got {self.models_from!r} "
                             "(not a directory)")


# ----------------------------------------------------------------------------- models

def _train_one(cfg: RobustnessConfig, data, name: str, run: int):
    """One variant of one run trained with the public API: ``(model, log line)``; raises on failure."""
    seed = cfg.seed + run
    view, nu, sn = VARIANTS[name]
    set_seed(seed)  # same seed, same initial weights for every variant of a run
    model = build_view_model(view, data, width=cfg.width, field="parabolic", expansion=nu,
                             spectral_norm=sn, head=cfg.head)
    reg = DynamicsRegularizer(model, kinetic=cfg.kinetic) if cfg.kinetic else None
    t0 = time.perf_counter()
    try:
        res = fit(model, ClassificationTask(data, label_smoothing=cfg.label_smoothing), epochs=cfg.epochs,
                  batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, device=cfg.device, out=None, quiet=True,
                  label=name, lr_schedule=cfg.lr_schedule, regularizer=reg)
    finally:
        if reg is not None:
            reg.remove()
    return res.model, (f"[{name} run {run}] trained in {time.perf_counter() - t0:.1f}s, "
                       f"test accuracy {100 * res.metrics[-1]['test_acc']:.1f}%")


def _variant_of(view: str, model_config: dict) -> str:
    nu, sn = float(model_config.get("expansion") or 0.0), bool(model_config.get("spectral_norm"))
    for name, spec in VARIANTS.items():
        if spec == (view, nu, sn):
            return name
    return f"{view}_nu{nu:g}" + ("_sn" if sn else "")


def _load_specs(cfg: RobustnessConfig) -> list[dict]:
    """The checkpoints of ``odenet compare`` runs under ``cfg.models_from`` (one run or a folder of runs)."""
    root = Path(cfg.models_from)
    run_dirs = [root] if any((root / v / "checkpoint.pt").is_file() for v in VIEWS) else sorted(
        d for d in root.iterdir() if d.is_dir() and any((d / v / "checkpoint.pt").is_file() for v in VIEWS))
    if not run_dirs:
        raise ValueError(f"--models-from {root}: no {'/'.join(VIEWS)}/checkpoint.pt found there or in its "
                         "subdirectories; pass the --out directory of an `odenet compare` run")
    specs = []
    for run, d in enumerate(run_dirs):
        for view in VIEWS:
            path = d / view / "checkpoint.pt"
            if not path.is_file():
                continue
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            run_cfg = ckpt.get("run_config") or {}
            if run_cfg.get("data", "digits") != "digits":
                raise ValueError(f"{path}: trained on {run_cfg.get('data')!r}; the robustness job needs digits")
            name = _variant_of(view, dict(ckpt.get("model_config") or {}))
            specs.append({"name": name, "run": run, "path": str(path), "view": view,
                          "split": (int(run_cfg.get("seed", 0)), run_cfg.get("limit_train"),
                                    run_cfg.get("limit_test"))})
    return specs


#: Relative cost of a variant's task (train + attack, measured): the pool starts the costliest first.
_COST = {"node": 6, "implicit": 5, "implicit_nu0": 3, "implicit_nu-1": 3, "resnet": 1, "resnet_sn": 1}


def _task_specs(cfg: RobustnessConfig) -> list[dict]:
    if cfg.models_from is not None:
        return _load_specs(cfg)
    return [{"name": name, "run": run, "split": (cfg.seed, cfg.limit_train, None)}
            for run in range(cfg.runs) for name in cfg.variants]


def _run_task(cfg: RobustnessConfig, spec: dict) -> dict:
    """One model: train (or load) it, attack it, run the sanity checks and C2's ratios.

    Returns plain data (no model): ``log`` lines, and either ``failed`` or ``suite``,
    ``checks``, ``rho`` and ``train_s``.
    """
    name, run = spec["name"], spec["run"]
    device = resolve_device(cfg.device)
    seed, limit_train, limit_test = spec["split"]
    data = load_dataset("digits", seed=seed, limit_train=limit_train, limit_test=limit_test)
    rec: dict = {"name": name, "run": run, "log": [], "n_test": min(cfg.n_test, len(data.y_test)),
                 "split_seed": data.info["seed"]}
    t0 = time.perf_counter()
    if "path" in spec:
        model = load_model(spec["path"], **VIEWS[spec["view"]])
        rec["log"].append(f"[{name} run {run}] loaded {spec['path']}")
    else:
        try:
            model, line = _train_one(cfg, data, name, run)
        except (TrainingError, solvers.SolverError) as exc:
            rec["failed"] = f"training: {type(exc).__name__}: {exc}"
            rec["log"].append(f"[{name} run {run}] training FAILED: {exc}")
            return rec
        rec["log"].append(line)
    rec["train_s"] = time.perf_counter() - t0
    model = model.to(device)
    settings = AttackSettings(pgd_steps=cfg.pgd_steps, square_queries=cfg.square_queries,
                              square_epsilons=cfg.square_epsilons)
    eps_c = cfg.claim_eps[1]
    eps_list = sorted(set(float(e) for e in cfg.epsilons))
    keep = [("pgd", eps_c)] if eps_c in eps_list else []
    x, y = data.x_test[:cfg.n_test].to(device), data.y_test[:cfg.n_test].to(device)
    t1 = time.perf_counter()
    try:
        res = attack_suite(model, x, y, eps_list, std=data.std, clamp=data.normalised_range(),
                           settings=settings, seed=cfg.seed + run, keep_inputs=keep)
    except solvers.SolverError as exc:
        rec["failed"] = f"attack: {type(exc).__name__}: {exc}"
        rec["log"].append(f"[{name} run {run}] attack FAILED: {exc}")
        return rec
    inputs = res.pop("inputs")
    rec["rho"] = (contraction_ratios(model, x, inputs[("pgd", eps_c)]).tolist()
                  if ("pgd", eps_c) in inputs else [])
    rec["attack_s"] = time.perf_counter() - t1
    rec["log"].append(f"[{name} run {run}] attacked in {rec['attack_s']:.1f}s")
    rec["checks"] = sanity_checks(res)
    rec["suite"] = res
    return rec


def _log(cfg: RobustnessConfig, bar, rec: dict) -> None:
    if not cfg.quiet:
        for line in rec["log"]:
            bar.write(line)
    bar.update()


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_tasks(cfg: RobustnessConfig, specs: list[dict]) -> list[dict]:
    """Every task, in ``cfg.workers`` processes (costliest first), returned in the order of ``specs``."""
    from tqdm.auto import tqdm

    order = sorted(range(len(specs)), key=lambda i: -_COST.get(specs[i]["name"], 3))
    bar = tqdm(total=len(specs), desc="models", disable=cfg.quiet, dynamic_ncols=True)
    out: list = [None] * len(specs)
    try:
        if cfg.workers == 1 or len(specs) == 1:
            for i in order:
                out[i] = _run_task(cfg, specs[i])
                _log(cfg, bar, out[i])
            return out
        import concurrent.futures as cf
        import multiprocessing as mp

        threads = max(1, torch.get_num_threads() // cfg.workers)
        with cf.ProcessPoolExecutor(max_workers=min(cfg.workers, len(specs)), mp_context=mp.get_context("spawn"),
                                    initializer=_worker_init, initargs=(threads,)) as pool:
            futures = {pool.submit(_run_task, cfg, specs[i]): i for i in order}
            for fut in cf.as_completed(futures):
                i = futures[fut]
                out[i] = fut.result()
                _log(cfg, bar, out[i])
        return out
    finally:
        bar.close()


# ----------------------------------------------------------------------------- aggregation

def _stats(values: list) -> dict:
    v = [x for x in values if x is not None and math.isfinite(x)]
    n = len(v)
    mean = sum(v) / n if n else float("nan")
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n_runs": n}


def _aggregate(per_run: dict) -> dict:
    """``summary[variant][attack][eps] = {mean, std, n_runs}`` (+ ``clean`` and ``worst``)."""
    summary: dict = {}
    for (name, _run), r in per_run.items():
        s = summary.setdefault(name, {"clean": [], "worst": {}, "attacks": {}})
        s["clean"].append(r["clean_accuracy"])
        for e, v in r["worst"].items():
            s["worst"].setdefault(e, []).append(v)
        for a, rec in r["attacks"].items():
            for e, v in rec["accuracy"].items():
                s["attacks"].setdefault(a, {}).setdefault(e, []).append(v)
    out = {}
    for name, s in summary.items():
        out[name] = {"clean": _stats(s["clean"]), "worst": {e: _stats(v) for e, v in s["worst"].items()},
                     "attacks": {a: {e: _stats(v) for e, v in d.items()} for a, d in s["attacks"].items()}}
    return out


# ----------------------------------------------------------------------------- the job

def robustness(config: RobustnessConfig | None = None, **kwargs: Any) -> dict:
    """Run the robustness protocol on the three views (and their variants); write the report.

    Pass a :class:`RobustnessConfig` or its fields as keywords. Returns the payload also
    written to ``<out>/results.json``: ``claims`` (C2, C3, H1), ``summary`` (per variant,
    attack and eps: ``mean``, ``std``, ``n_runs``), ``runs`` (per model: the attack
    suite's numbers and the sanity checks), ``invalid_runs``, ``failed``, ``table``.
    """
    if config is None:
        config = RobustnessConfig(**kwargs)
    elif kwargs:
        config = RobustnessConfig(**{**asdict(config), **kwargs})
    cfg = config.resolved()
    out = Path(cfg.out)
    say = (lambda *a: None) if cfg.quiet else (lambda *a: print(*a, flush=True))
    device = resolve_device(cfg.device)
    t_start = time.perf_counter()
    cpu0 = _cpu_times()

    # models and attacks: one task per model, in cfg.workers processes
    specs = _task_specs(cfg)
    if cfg.models_from is None:
        data = load_dataset("digits", seed=cfg.seed, limit_train=cfg.limit_train)
        say(f"odenet robustness: {data.summary()}; {cfg.runs} run(s) x {len(cfg.variants)} variant(s); "
            f"fixed test subset of {min(cfg.n_test, len(data.y_test))}; {cfg.workers} worker(s)")
    records = _run_tasks(cfg, specs)
    eps_h1, eps_c = cfg.claim_eps
    eps_list = sorted(set(float(e) for e in cfg.epsilons))
    per_run, checks, rhos, failed = {}, {}, {}, {}
    for rec in records:
        key = (rec["name"], rec["run"])
        if "failed" in rec:
            failed[f"{rec['name']}/run{rec['run']}"] = rec["failed"]
            continue
        if rec["rho"]:
            rhos.setdefault(rec["name"], []).extend(rec["rho"])
        checks[key], per_run[key] = rec["checks"], rec["suite"]
    train_s = sum(r.get("train_s", 0.0) for r in records)
    attack_s = sum(r.get("attack_s", 0.0) for r in records)

    # claims
    summary = _aggregate({k: v for k, v in per_run.items()})
    nu = {n: VARIANTS[n][1] for n in VARIANTS}
    clean = _by_run(per_run, lambda r: r["clean_accuracy"])
    claims = [claim_c2(rhos, nu, eps_c)]
    claims.append(claim_c3(_by_run(per_run, lambda r: r["attacks"]["pgd"]["accuracy"].get(str(eps_c))),
                           clean, nu, eps_c))
    claims.append(claim_h1(_by_run(per_run, lambda r: r["attacks"]["pgd"]["flip_rate"].get(str(eps_h1))),
                           clean, {"resnet_sn": "resnet"}, eps_h1))
    invalid = {f"{n}/run{r}": [k for k, v in c.items() if k != "valid" and not v["ok"] and "reported only" not in k]
               for (n, r), c in checks.items() if not c["valid"]}

    # report
    cpu1 = _cpu_times()
    report = {
        "config": {**asdict(cfg), "epsilons": eps_list, "variants": list(cfg.variants)},
        "protocol_conformant": cfg.runs >= 3 and cfg.pgd_steps >= 40 and not cfg.quick,
        "variants": {n: dict(zip(("view", "expansion", "spectral_norm"), VARIANTS[n])) for n in cfg.variants},
        "test_subset": {"n": min((r["n_test"] for r in records), default=0),
                        "split_seeds": sorted({r["split_seed"] for r in records})},
        "summary": summary,
        "runs": {f"{n}/run{r}": {**per_run[(n, r)], "sanity": checks[(n, r)]} for n, r in per_run},
        "invalid_runs": invalid,
        "failed": failed,
        "contraction_ratio": {n: {"median": float(torch.tensor(v).median()), "max": max(v)} for n, v in rhos.items()
                              if v},
        "device": str(device),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "time_s": {"models (sum over tasks)": train_s, "attacks (sum over tasks)": attack_s,
                   "wall": time.perf_counter() - t_start, "user+sys": (cpu1 - cpu0), "workers": cfg.workers},
    }
    out.mkdir(parents=True, exist_ok=True)
    if cfg.plots and summary:
        from ._robustness_plots import plot_accuracy_sheet, plot_attack_sheet

        report["plots"] = [str(plot_accuracy_sheet(summary, out / "robustness_by_view.png")),
                           str(plot_attack_sheet(summary, out / "robustness_by_attack.png"))]
    table = format_robustness_table(report, claims)
    report["table"] = table
    payload = write_claims_report(out, claims, title="odenet robustness: claims", extra=report)
    atomic_write_text(out / "robustness.md", table)
    print(table, flush=True)
    say(f"wrote {out / 'results.json'}, {out / 'robustness.md'}" + (" and PNGs" if cfg.plots else "")
        + f" ({report['time_s']['wall']:.0f}s wall, {report['time_s']['user+sys']:.0f}s user+sys)")
    return payload


def _cpu_times() -> float:
    import os

    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _by_run(per_run: dict, get) -> dict:
    out: dict = {}
    for (name, run), r in per_run.items():
        v = get(r)
        if v is not None:
            out.setdefault(name, {})[run] = v
    return out


def _ms(s: dict | None) -> str:
    if not s or not math.isfinite(s.get("mean", float("nan"))):
        return "-"
    std = s["std"]
    return f"{100 * s['mean']:.1f}" + (f" ± {100 * std:.1f}" if math.isfinite(std) else "")


def format_robustness_table(report: dict, claims: Sequence) -> str:
    """Markdown: accuracy (%) mean ± std over runs per variant and attack, then the claims."""
    summ = report["summary"]
    eps = [e for e in report["config"]["epsilons"] if e > 0]
    lines = ["# odenet robustness", ""]
    for a in list(ATTACKS) + ["worst"]:
        head = ["variant", "clean"] + [f"ε={e:g}" for e in eps]
        rows = []
        for n, s in summ.items():
            d = s["worst"] if a == "worst" else s["attacks"].get(a, {})
            if not d:
                continue
            rows.append([n, _ms(s["clean"])] + [_ms(d.get(str(e))) for e in eps])
        if not rows:
            continue
        lines += [f"## {a}" + (" (per-point worst case over " + ", ".join(ADVERSARIAL) + ")" if a == "worst" else ""),
                  "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    n_runs = max((s["clean"]["n_runs"] for s in summ.values()), default=0)
    lines.append(f"Test accuracy (%) on a fixed subset of {report['test_subset']['n']} digits test points, "
                 f"mean ± std over {n_runs} run(s); ε is a fraction of the raw input range [0, 1]. "
                 + ("" if report["protocol_conformant"] else "**Not protocol-conformant (quick or < 3 runs).** "))
    inv = report["invalid_runs"]
    lines.append("")
    lines.append("Sanity checks: " + ("all runs valid." if not inv else
                                      "INVALID runs: " + "; ".join(f"{k} ({', '.join(v)})" for k, v in inv.items())))
    for k, v in report["failed"].items():
        lines.append(f"- {k}: FAILED ({v})")
    lines += ["", "## Claims", "", claims_table(claims)]
    return "\n".join(lines) + "\n"
