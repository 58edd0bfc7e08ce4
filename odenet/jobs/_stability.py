"""The ``odenet stability`` job: measure the claims of CLAIMS.md sections A-I.

A readable pipeline::

    StabilityConfig -> check the output directory -> measure each selected claim (tqdm)
                    -> Claim list -> results.json + claims.md -> PNGs

Each claim is measured on this project's own solvers, fields and blocks by a function of
:mod:`odenet.jobs._stab_a` (section A), ``_stab_b`` (B), ``_stab_cde`` (C1, D, E1), ``_stab_e2`` (E2),
``_stab_fg`` (F1, F2, G), ``_stab_h`` (H), ``_stab_train`` (F3 and the trained halves of G3, H3) and
``_stab_i`` (I), with the reusable measurements of :mod:`odenet.analysis`.
C2, C3 and H1's PGD half belong to ``odenet robustness``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import torch

from . import _stab_a, _stab_b, _stab_cde, _stab_e2, _stab_fg, _stab_h, _stab_i, _stab_train
from .._io import check_out_dir
from ._claims import Claim, write_claims_report
from ._stab_common import Context

__all__ = ["StabilityConfig", "stability", "STABILITY_CLAIMS"]

#: Claim ID -> measurement, in CLAIMS.md order.
_MEASURES = {**_stab_a.MEASURES, **_stab_b.MEASURES, **_stab_cde.MEASURES, **_stab_e2.MEASURES,
             **_stab_fg.MEASURES, **_stab_h.MEASURES, **_stab_train.MEASURES,
             **_stab_i.MEASURES}
STABILITY_CLAIMS = tuple(sorted(_MEASURES, key=lambda k: (k[0], int(k[1:]))))


@dataclass
class StabilityConfig:
    """Settings of :func:`stability`.

    Attributes
    ----------
    out : str
        Output directory (created); must not be a file or lie under one.
    claims : sequence of str, optional
        Claim IDs to measure (default all of :data:`STABILITY_CLAIMS`).
    full : bool
        Long versions (Lorenz at T = 1e4, more points and pairs).
    seed : int
        Random seed of every measurement.
    quiet : bool
        No progress bar.
    plots : bool
        Write the PNGs.
    threads : int
        torch intra-op threads during the run (the tensors are tiny; 1 avoids contention),
        restored afterwards.
    """

    out: str = "runs/stability"
    claims: Optional[Sequence[str]] = None
    full: bool = False
    seed: int = 0
    quiet: bool = False
    plots: bool = True
    threads: int = 1

    def __post_init__(self):
        if not isinstance(self.out, (str, os.PathLike)) or not str(self.out):
            raise TypeError(f"`out` must be a directory path, got {self.out!r}")
        self.out = str(self.out)
        if self.claims is not None:
            if isinstance(self.claims, str):
                self.claims = [c.strip() for c in self.claims.split(",") if c.strip()]
            bad = [c for c in self.claims if c not in _MEASURES]
            if bad or not self.claims:
                raise ValueError(f"unknown claim ID(s) {bad or list(self.claims)} for `claims`; valid: "
                                 f"{', '.join(STABILITY_CLAIMS)} (C2, C3 and H1's PGD half are measured by "
                                 "`odenet robustness`)")
            self.claims = [c for c in STABILITY_CLAIMS if c in self.claims]
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {self.seed!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"`threads` must be a positive int, got {self.threads!r}")


def stability(config: Optional[StabilityConfig] = None, **kwargs) -> dict:
    """Measure the stability claims of CLAIMS.md and write the report into ``config.out``.

    Parameters
    ----------
    config : StabilityConfig, optional
        The settings; or give them as keyword arguments (``out=..., claims=[...]``).

    Returns
    -------
    dict
        The ``results.json`` payload: ``claims`` (one entry per claim ID), ``config``,
        ``seconds`` and ``figures`` (PNG file names).
    """
    if config is None:
        config = StabilityConfig(**kwargs)
    elif kwargs:
        raise TypeError("give either a StabilityConfig or keyword arguments, not both")
    out = check_out_dir(config.out)
    ids = list(config.claims or STABILITY_CLAIMS)
    from tqdm.auto import tqdm

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    bar = tqdm(ids, desc="odenet stability", unit="claim", disable=config.quiet)
    ctx = Context(full=config.full, seed=config.seed, tick=lambda text: bar.set_postfix_str(text))
    claims: List[Claim] = []
    seconds = {}
    start = time.perf_counter()
    try:
        for cid in bar:
            t0 = time.perf_counter()
            bar.set_postfix_str(cid)
            with torch.random.fork_rng():
                claims.append(_MEASURES[cid](ctx))
            seconds[cid] = round(time.perf_counter() - t0, 2)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    figures = []
    if config.plots:
        from ._stab_plots import write_figures

        figures = [p.name for p in write_figures(ctx.figures, out)]
    extra = {"config": asdict(config), "seconds": {"total": round(time.perf_counter() - start, 2), **seconds},
             "figures": figures}
    payload = write_claims_report(out, claims, title="odenet stability: claims of CLAIMS.md A-I", extra=extra)
    if not config.quiet:
        n_yes = sum(c.holds is True for c in claims)
        n_no = sum(c.holds is False for c in claims)
        print(f"odenet stability: {len(claims)} claims, {n_yes} hold, {n_no} do not "
              f"({', '.join(c.id for c in claims if c.holds is False) or 'none'}); report in {out}")
    return payload
