"""UEA/UCR classification sets from the archive copy bundled inside sktime's (or aeon's) wheel.

Nothing is downloaded: :func:`load_uea` reads the ``<NAME>_TRAIN.ts`` / ``<NAME>_TEST.ts``
files that ship in ``sktime/datasets/data/<NAME>/`` (sktime is a dependency of odenet;
aeon's copy, which also holds e.g. PickupGestureWiimoteZ, is used too when aeon is
installed). The packages are only located, never imported: the ``.ts`` format is parsed
here. JapaneseVowels (12 channels, lengths 7-29, 9 classes, 270 train / 370 test) is the
default set of ``odenet timeseries``.

Series are indexed by their sample number (the ``k``-th sample at time ``k * time_scale``,
by default the sample index ``0, 1, ..., T_i - 1``); variable lengths are kept (padded, see
:mod:`odenet.data._irregular`), missing values (``?``/``NaN``) get mask 0, and every channel
is standardised with the training split's observed values.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from typing import Dict, List

import torch

from ._irregular import SeriesData, pad_series, standardise

__all__ = ["load_uea", "uea_datasets"]

_PACKAGES = ("sktime", "aeon")


def _data_dirs() -> List[Path]:
    dirs = []
    for pkg in _PACKAGES:
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        d = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
        if d.is_dir():
            dirs.append(d)
    return dirs


def uea_datasets() -> Dict[str, Path]:
    """Bundled classification sets: ``{name: folder}`` (those with ``_TRAIN.ts`` and ``_TEST.ts``)."""
    found: Dict[str, Path] = {}
    for d in _data_dirs():
        for sub in sorted(p for p in d.iterdir() if p.is_dir()):
            if (sub / f"{sub.name}_TRAIN.ts").is_file() and (sub / f"{sub.name}_TEST.ts").is_file():
                found.setdefault(sub.name, sub)
    return found


def _parse_ts(path: Path) -> tuple[list, list, list]:
    """``(series, labels, class_names)`` of a ``.ts`` file; a series is a list of channel lists."""
    series, labels, classes = [], [], []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                low = line.lower()
                if low.startswith("@classlabel"):
                    parts = line.split()
                    classes = parts[2:] if len(parts) > 2 and parts[1].lower() == "true" else []
                elif low.startswith("@timestamps") and line.split()[-1].lower() == "true":
                    raise ValueError(f"{path.name}: time-stamped .ts files are not supported")
                elif low.startswith("@data"):
                    in_data = True
                continue
            *chans, label = line.split(":")
            series.append([[float("nan") if v in ("?", "NaN", "nan") else float(v) for v in c.split(",")]
                           for c in chans])
            labels.append(label.strip())
    if not series:
        raise ValueError(f"{path} holds no series")
    return series, labels, classes


def _to_tensors(series: list, time_scale: float = 1.0) -> tuple[list, list]:
    times, values = [], []
    for s in series:
        length = max(len(c) for c in s)
        arr = torch.full((length, len(s)), float("nan"))
        for j, c in enumerate(s):
            arr[: len(c), j] = torch.tensor(c)
        # trailing rows with nothing observed are padding of an unequal-length file
        observed = ~torch.isnan(arr).all(1)
        last = int(observed.nonzero().max()) + 1 if bool(observed.any()) else 0
        if last == 0:
            raise ValueError("a series in the file has no observed value")
        values.append(arr[:last])
        times.append(torch.arange(last, dtype=torch.float64) * time_scale)
    return times, values


def load_uea(name: str = "JapaneseVowels", *, time_scale: float = 1.0) -> SeriesData:
    """Load the bundled UEA/UCR classification set ``name`` (no downloads).

    Returns a :class:`~odenet.data.SeriesData` with ``task="classification"``, labels
    ``0..K-1`` (in the order of the file's ``@classLabel`` line) and channels
    standardised by the training split. The ``k``-th sample of a series is at time
    ``k * time_scale`` (``odenet timeseries`` uses 0.1; see docs/timeseries.md).

    Raises
    ------
    ValueError
        ``name`` is not bundled (the message lists close matches and the bundled names);
        ``time_scale`` is not a positive finite number.
    """
    if isinstance(time_scale, bool) or not (isinstance(time_scale, (int, float))
                                            and 0 < float(time_scale) < float("inf")):
        raise ValueError(f"time_scale must be a positive finite number (the time between two samples), "
                         f"got {time_scale!r}")
    sets = uea_datasets()
    if name not in sets:
        if not sets:
            raise ValueError("no bundled UEA/UCR archive found; install it with `pip install sktime` "
                             "(its wheel ships the data; nothing is downloaded at run time)")
        by_lower = {k.lower(): k for k in sets}
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""
        raise ValueError(f"data set {name!r} is not in the bundled UEA/UCR archive.{hint} "
                         f"Bundled classification sets: {', '.join(sorted(sets))}")
    folder = sets[name]
    tr_series, tr_labels, classes = _parse_ts(folder / f"{name}_TRAIN.ts")
    te_series, te_labels, _ = _parse_ts(folder / f"{name}_TEST.ts")
    if not classes:
        classes = sorted(set(tr_labels) | set(te_labels))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(tr_labels + te_labels) - set(index))
    if unknown:
        raise ValueError(f"{name}: labels {unknown[:5]} are not declared in @classLabel")
    train = pad_series(*_to_tensors(tr_series, float(time_scale)))
    test = pad_series(*_to_tensors(te_series, float(time_scale)))
    train, test, mean, std = standardise(train, test)
    lengths = torch.cat([train.lengths, test.lengths])
    desc = (f"{name} from the UEA/UCR archive copy bundled in {folder.parent.parent.parent.name} "
            f"({folder}); {len(train)} train / {len(test)} test series, {train.channels} channel(s), "
            f"lengths {int(lengths.min())}-{int(lengths.max())}, {len(classes)} classes; "
            f"time = sample index x {float(time_scale):g}")
    return SeriesData(name=name, task="classification", train=train, test=test,
                      y_train=torch.tensor([index[c] for c in tr_labels]),
                      y_test=torch.tensor([index[c] for c in te_labels]), num_classes=len(classes),
                      description=desc, info={"source": str(folder), "classes": classes,
                                              "mean": mean.tolist(), "std": std.tolist(),
                                              "time_scale": float(time_scale)})
