"""Atomic file writing and safe checkpoint loading.

Every file the training code writes (metrics, results, checkpoints) goes through
:func:`atomic_write_bytes`: the bytes land in a temporary file in the destination's
directory, are flushed and ``fsync``-ed, and the temporary file then replaces the
destination with :func:`os.replace`. A crash at any point leaves either the old file
or the new one, never a torn mixture.

Checkpoints are loaded with ``torch.load(weights_only=True)``: a file holding
anything other than tensors and plain containers (a pickled class, a lambda) is
refused, and so is a truncated or otherwise corrupt file, with
:class:`CheckpointError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
    "write_csv",
    "save_checkpoint",
    "load_checkpoint",
    "check_config_match",
    "check_out_dir",
    "check_resume_fields",
    "payload_checksum",
]

#: Format tag stored in every checkpoint; bumped when the layout changes.
CHECKPOINT_FORMAT = "odenet-checkpoint-v1"

#: Keys every checkpoint written by :func:`odenet.train` carries.
_REQUIRED_KEYS = ("format", "epoch", "model_state", "model_config", "model_kind")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: missing, corrupt, unsafe or mismatched.

    The message names the file and what is wrong with it (for a mismatch, the
    first differing setting, e.g. ``checkpoint has width=32, model has width=16``).
    """


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination. Its parent directory is created if missing.
    data : bytes
        The complete new contents.

    Returns
    -------
    pathlib.Path
        The destination path.

    Notes
    -----
    The data goes to a temporary file in the same directory (so that the final
    :func:`os.replace` is a rename within one file system), which is flushed and
    ``fsync``-ed before the rename. If anything fails before the rename, the
    temporary file is removed and the old destination is untouched. Temporary files
    that an earlier, crashed write to the same destination left behind
    (``.<name>.*.tmp``) are removed first. The file gets mode ``0666 & ~umask``
    (``0644`` under the usual umask), as any other tool's output.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())  # mkstemp creates 0600; outputs are readable like any tool's
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _file_mode() -> int:
    """``0666`` minus the process umask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _remove_leftovers(path: Path) -> None:
    """Delete ``.<name>.*.tmp`` files a crash between write and rename left next to ``path``."""
    for leftover in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        try:
            leftover.unlink()
        except FileNotFoundError:
            pass


def glob_escape(name: str) -> str:
    """``name`` with the glob metacharacters ``*?[`` quoted."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def check_out_dir(out: str | os.PathLike | None, *, arg: str = "--out") -> Path | None:
    """Check, before any work, that ``out`` can become an output directory.

    Parameters
    ----------
    out : path or None
        The directory (created later if missing). ``None`` means "write nothing".
    arg : str
        The argument's name in messages.

    Returns
    -------
    pathlib.Path or None

    Raises
    ------
    ValueError
        ``out`` is empty, names an existing file, lies under a file, or its directory (or
        the nearest existing parent) is not writable. The message names the path and the fix.
    """
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"{arg} must be a path, got {type(out).__name__}")
    if str(out).strip() == "":
        raise ValueError(f"{arg} is empty; give a directory such as runs/train")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{arg} {path} is an existing file, not a directory; choose another {arg}")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{arg} {path} lies under the file {probe}; choose another {arg}")
    try:
        fd, name = tempfile.mkstemp(prefix=".odenet-write-test.", dir=probe)
    except OSError as exc:
        raise ValueError(f"{arg} {path}: cannot write into {probe} ({exc.strerror or exc}); "
                         f"choose a writable {arg}") from None
    os.close(fd)
    os.unlink(name)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write the string ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    """Convert tensors, numpy scalars and paths for :func:`json.dumps`."""
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _finite_or_none(obj: Any) -> Any:
    """Replace non-finite floats by ``None`` so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, standard JSON (NaN/inf become ``null``), atomically."""
    text = json.dumps(_finite_or_none(obj), indent=2, sort_keys=False, default=_json_default,
                      allow_nan=False)
    return atomic_write_text(path, text + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              fieldnames: Iterable[str] | None = None) -> Path:
    """Write a list of dicts as CSV with a header row, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination.
    rows : sequence of mapping
        One dict per row.
    fieldnames : iterable of str, optional
        Column order; default: keys in order of first appearance over all rows.
    """
    if fieldnames is None:
        names: list[str] = []
        for row in rows:
            for key in row:
                if key not in names:
                    names.append(key)
    else:
        names = list(fieldnames)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow(dict(row))
    return atomic_write_text(path, buf.getvalue())


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Serialise ``payload`` with :func:`torch.save` and write it atomically.

    The payload must be loadable with ``weights_only=True``: tensors, numbers,
    strings, ``None`` and lists/tuples/dicts of these. This is checked before the
    file is replaced, so an unsafe payload never reaches disk. The file also stores
    ``sha256``, the :func:`payload_checksum` of everything else, which
    :func:`load_checkpoint` verifies: a flipped byte in a weight is refused, not loaded.
    """
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a mapping, got {type(payload).__name__}")
    payload = {k: v for k, v in payload.items() if k != _CHECKSUM_KEY}
    payload[_CHECKSUM_KEY] = payload_checksum(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    try:  # refuse to write what we could not read back safely
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise TypeError(
            "checkpoint payload holds objects that torch.load(weights_only=True) refuses; "
            f"store only tensors, numbers, strings and containers ({_reason(exc)})") from exc
    return atomic_write_bytes(path, data)


_CHECKSUM_KEY = "sha256"


def payload_checksum(payload: Any) -> str:
    """SHA-256 over a checkpoint payload: its structure, every number and every tensor's bytes.

    Dict keys are visited in sorted order, so the digest does not depend on insertion
    order; a tensor contributes its dtype, shape and raw (CPU, contiguous) bytes, so a
    single changed bit in a weight changes the digest.
    """
    h = hashlib.sha256()

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, Mapping):
            h.update(f"D{len(obj)}".encode())
            for k in sorted(obj, key=repr):
                h.update(repr(k).encode())
                visit(obj[k])
        elif isinstance(obj, (list, tuple)):
            h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
            for v in obj:
                visit(v)
        else:
            h.update(f"S{type(obj).__name__}:{obj!r}".encode())

    visit(payload)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    """The informative part of a torch.load failure (its messages run to many lines).

    torch's advice to re-run with ``weights_only=False`` is dropped: it is the one thing a
    user must not do with a file of unknown origin.
    """
    text = str(exc)
    m = re.search(r"GLOBAL\s+([\w.]+)", text)
    if m:
        return f"unsupported GLOBAL {m.group(1)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "Unpickler error" in ln:
            return ln.split("Unpickler error:", 1)[-1].strip()
    lines = [ln for ln in lines if "weights_only" not in ln and "Weights only" not in ln
             and not ln.startswith("Check the documentation")]
    return lines[0] if lines else type(exc).__name__


def _unsafe(exc: BaseException) -> bool:
    """Whether a torch.load failure means "holds objects weights_only refuses" (not "corrupt")."""
    return re.search(r"GLOBAL\s+[\w.]+", str(exc)) is not None


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu",
                    require_keys: Sequence[str] = _REQUIRED_KEYS) -> dict:
    """Load a checkpoint safely.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    map_location : optional
        Passed to :func:`torch.load`; default ``"cpu"``.
    require_keys : sequence of str
        Keys that must be present (default: those every training checkpoint has);
        pass ``()`` to load any safe mapping.

    Returns
    -------
    dict
        The checkpoint contents.

    Raises
    ------
    CheckpointError
        If the file is missing, corrupt or truncated, holds anything
        ``weights_only=True`` refuses (arbitrary pickled objects), is not a mapping,
        lacks a required key, or has an unknown format tag.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure means "unusable file"
        if _unsafe(exc):
            raise CheckpointError(
                f"checkpoint {path} holds non-tensor objects ({_reason(exc)}) and is refused: "
                "odenet loads only tensors, numbers, strings and containers of them, never "
                "pickled code; do not load this file") from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unsafe and was refused "
            f"(torch.load with weights_only=True failed: {_reason(exc)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    missing = [k for k in require_keys if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the key(s) {missing}; "
                              "it was not written by odenet.train")
    if "format" in require_keys and obj["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {obj['format']!r}, "
                              f"this odenet reads {CHECKPOINT_FORMAT!r}")
    if _CHECKSUM_KEY in obj or "format" in require_keys:
        stored = obj.pop(_CHECKSUM_KEY, None)
        if not isinstance(stored, str):
            raise CheckpointError(f"checkpoint {path} has no {_CHECKSUM_KEY} checksum (it was not "
                                  "written by odenet.save_checkpoint) and is refused")
        if payload_checksum(obj) != stored:
            raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the "
                                  f"stored {_CHECKSUM_KEY} checksum (a changed byte); it was refused")
    _check_fields(obj, path)
    return obj


def _check_fields(obj: dict, path: Path) -> None:
    """Refuse a checkpoint whose known fields have the wrong type or range, naming the field."""
    def bad(field: str, want: str) -> CheckpointError:
        return _bad_field(obj, path, field, want)

    if "epoch" in obj and (isinstance(obj["epoch"], bool) or not isinstance(obj["epoch"], int)
                           or obj["epoch"] < 0):
        raise bad("epoch", "a non-negative integer")
    for key in ("model_state", "model_config", "run_config", "optimizer_state", "data"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], dict):
            raise bad(key, "a dict")
    if "model_state" in obj and not all(isinstance(v, torch.Tensor) for v in obj["model_state"].values()):
        raise bad("model_state", "a dict of tensors")
    if "model_kind" in obj and not isinstance(obj["model_kind"], str):
        raise bad("model_kind", "a class name (str)")


def _bad_field(obj: Mapping, path, field: str, want: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: field {field!r} must be {want}, got "
                           f"{str(obj[field])[:60]!r}; the file was not written by odenet.train")


def check_resume_fields(obj: Mapping, path: str | os.PathLike) -> None:
    """Refuse a training checkpoint whose resume fields (metrics, rng) are malformed.

    Raises
    ------
    CheckpointError
        Naming the field: ``metrics`` not a list of dicts (or not one per epoch),
        ``rng`` without the generator states of :func:`odenet.training._runtime.get_rng_state`.
    """
    if "metrics" in obj:
        m = obj["metrics"]
        if not isinstance(m, list) or not all(isinstance(r, dict) for r in m):
            raise _bad_field(obj, path, "metrics", "a list of per-epoch dicts")
        if isinstance(obj.get("epoch"), int) and len(m) != obj["epoch"]:
            raise CheckpointError(f"checkpoint {path}: field 'metrics' has {len(m)} row(s) but "
                                  f"'epoch' is {obj['epoch']}; the file was not written by odenet.train")
    if "rng" in obj:
        rng = obj["rng"]
        need = {"python": list, "numpy": list, "torch": torch.Tensor}
        if not isinstance(rng, dict) or any(not isinstance(rng.get(k), t) for k, t in need.items()):
            raise CheckpointError(
                f"checkpoint {path}: field 'rng' must be a dict with 'python' (list), 'numpy' (list) "
                f"and 'torch' (tensor) generator states; the file was not written by odenet.train")


def check_config_match(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                       what: str = "model", ignore: Iterable[str] = (),
                       source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first setting that differs.

    Parameters
    ----------
    saved, current : mapping
        The configuration stored in the checkpoint and the one of the current run.
    what : str
        Word used for the current side in the message ("model", "run").
    ignore : iterable of str
        Keys allowed to differ (e.g. solver settings, which do not change weights).
    source : str
        Word used for the saved side in the message.

    Examples
    --------
    >>> check_config_match({"width": 32}, {"width": 16})
    Traceback (most recent call last):
    ...
    odenet._io.CheckpointError: checkpoint has width=32, model has width=16
    """
    skip = set(ignore)
    mismatches = []
    for key in list(saved) + [k for k in current if k not in saved]:
        if key in skip:
            continue
        a = saved.get(key, "<missing>")
        b = current.get(key, "<missing>")
        if _normalise(a) != _normalise(b):
            mismatches.append(f"{source} has {key}={a!r}, {what} has {key}={b!r}"
                              if not (isinstance(a, (int, float)) and isinstance(b, (int, float)))
                              else f"{source} has {key}={a}, {what} has {key}={b}")
    if mismatches:
        raise CheckpointError("; ".join(mismatches))


def _normalise(value: Any) -> Any:
    """Make tuples and lists compare equal (a checkpoint round-trip may turn one into the other)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    return value
