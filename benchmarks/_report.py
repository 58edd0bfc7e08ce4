"""Where benchmark results go, written the way the project writes files: atomically.

Every script writes its Markdown table with :func:`write_table` and its figure with
:func:`save_figure`; both reuse odenet's atomic writers (``odenet._io``, ``odenet.jobs._plots``).
"""

from __future__ import annotations

from pathlib import Path

from odenet._io import atomic_write_text
from odenet.jobs._plots import _pyplot as pyplot
from odenet.jobs._plots import _save

__all__ = ["RESULTS", "pyplot", "save_figure", "write_table", "parse_device"]

RESULTS = Path(__file__).resolve().parent / "results"


def write_table(name: str, text: str) -> Path:
    """Write ``results/<name>`` (Markdown) atomically and return its path."""
    return atomic_write_text(RESULTS / name, text if text.endswith("\n") else text + "\n")


def save_figure(fig, name: str) -> Path:
    """Save ``fig`` as ``results/<name>`` (PNG) atomically, close it, return the path."""
    try:
        return _save(fig, RESULTS / name)
    finally:
        pyplot().close(fig)


def parse_device(parser, spec: str):
    """``torch.device(spec)``, or ``parser.error`` naming ``--device`` (bad name, no CUDA here)."""
    import torch

    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        parser.error(f"--device: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
    return device
