"""Claims: the one record every stability or robustness measurement is reported as.

A claim (an ID from ``CLAIMS.md`` such as ``"B2"``) states an expected value, the value
measured by this project's own solvers, fields and blocks, the tolerance of the
comparison, and whether it holds: ``True``, ``False`` or ``"report"`` for claims whose
criterion is a report. ``expected`` and ``measured`` are a number, or, for a claim
measured per method, view or parameter, a mapping keyed by that name (for B2's axis
limits ``{"rk4": 2.7853, "dopri5": 3.3066, ...}``).

A claim that does not hold is reported as not holding, with the measured number: the
record has no way to hide it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from .._io import atomic_write_text, write_json

__all__ = ["Claim", "HOLDS_VALUES", "claims_table", "write_claims_report"]

#: The values ``Claim.holds`` may take.
HOLDS_VALUES = (True, False, "report")

Holds = Union[bool, str]


@dataclass
class Claim:
    """One measured claim.

    Attributes
    ----------
    id : str
        The claim's ID in ``CLAIMS.md`` (``"A1"``, ``"B2"``, ...).
    statement : str
        One line saying what is claimed.
    expected, measured : number or mapping
        The expected and the measured value (a mapping name -> value for claims
        measured per method, view or parameter).
    tolerance : number, str or mapping
        The tolerance of the comparison (absolute or relative: say which in ``notes``
        or in the statement), or a description such as ``"bound, slack 1e-6"``.
    holds : bool or "report"
        ``True``/``False``, or ``"report"`` where the criterion is a report.
    notes : str
        Anything a reader needs to read the numbers (method of measurement, caveats).
    details : mapping
        Extra measured data (curves, per-case rows) kept in ``results.json``.
    """

    id: str
    statement: str
    expected: Any
    measured: Any
    tolerance: Any
    holds: Holds
    notes: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Claim.id must be a non-empty string such as 'A1', got {self.id!r}")
        if isinstance(self.holds, bool) or self.holds == "report":
            return
        # numpy / torch booleans are accepted and stored as plain bools
        if type(self.holds).__name__ in ("bool_", "bool") or hasattr(self.holds, "item"):
            self.holds = bool(self.holds)
            return
        raise ValueError(f"Claim.holds must be True, False or 'report', got {self.holds!r} "
                         f"(claim {self.id})")

    def as_dict(self) -> dict:
        """The claim as plain JSON-ready data (non-finite numbers become ``None``)."""
        return {"id": self.id, "statement": self.statement, "expected": self.expected,
                "measured": self.measured, "tolerance": self.tolerance, "holds": self.holds,
                "notes": self.notes, "details": dict(self.details)}


def _fmt(value: Any, digits: int = 5) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_fmt(v, digits)}" for k, v in value.items())
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    return str(value)


def _holds_text(holds: Holds) -> str:
    return {True: "yes", False: "**no**"}.get(holds, "report") if isinstance(holds, bool) else "report"


def claims_table(claims: Iterable[Claim]) -> str:
    """A Markdown table of the claims: ID, statement, expected, measured, tolerance, holds."""
    rows = ["| id | claim | expected | measured | tolerance | holds |", "|---|---|---|---|---|---|"]
    for c in claims:
        cells = [c.id, c.statement, _fmt(c.expected), _fmt(c.measured), _fmt(c.tolerance),
                 _holds_text(c.holds)]
        rows.append("| " + " | ".join(x.replace("|", "\\|").replace("\n", " ") for x in cells) + " |")
    return "\n".join(rows) + "\n"


def write_claims_report(out: str | Path, claims: Sequence[Claim], *, title: str,
                        extra: Mapping[str, Any] | None = None) -> dict:
    """Write ``results.json`` (``{"claims": [...], **extra}``) and ``claims.md`` into ``out``.

    Both are written atomically. Returns the JSON payload.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"claims": [c.as_dict() for c in claims], **dict(extra or {})}
    write_json(out / "results.json", payload)
    n_no = sum(1 for c in claims if c.holds is False)
    summary = (f"{len(claims)} claims: {sum(1 for c in claims if c.holds is True)} hold, "
               f"{n_no} do not, {sum(1 for c in claims if c.holds == 'report')} reported\n")
    atomic_write_text(out / "claims.md", f"# {title}\n\n{summary}\n{claims_table(claims)}")
    return payload
