"""Tests of odenet._io: atomic writes, safe checkpoint loading, config mismatch messages."""

import csv
import json
import os
import pickle

import pytest
import torch

from odenet import _io
from odenet._io import (CHECKPOINT_FORMAT, CheckpointError, atomic_write_bytes, atomic_write_text,
                        check_config_match, load_checkpoint, save_checkpoint, write_csv, write_json)


def _ckpt(**extra):
    base = dict(format=CHECKPOINT_FORMAT, epoch=1, model_kind="M", model_config={"width": 4},
                model_state={"w": torch.arange(3.0)})
    return {**base, **extra}


def test_atomic_write_roundtrip_and_no_leftovers(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "hello")
    atomic_write_text(p, "world")
    assert p.read_text() == "world"
    assert sorted(os.listdir(p.parent)) == ["a.txt"]  # no temporary files left


def test_crash_mid_write_leaves_old_file(tmp_path, monkeypatch):
    p = tmp_path / "m.json"
    write_json(p, {"v": 1})

    def boom(src, dst):  # the process "dies" just before the rename
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(_io.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_json(p, {"v": 2})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["m.json"]  # temporary file cleaned up


def test_crash_while_writing_bytes_leaves_old_checkpoint(tmp_path, monkeypatch):
    p = tmp_path / "checkpoint.pt"
    save_checkpoint(p, _ckpt())
    real_fdopen = os.fdopen

    class Dying:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])  # half the bytes reach the disk ...
            raise OSError("disk full")  # ... then the write fails

        def flush(self):
            pass

        def fileno(self):
            return self.fh.fileno()

    monkeypatch.setattr(_io.os, "fdopen", lambda fd, mode: Dying(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(p, _ckpt(epoch=2))
    monkeypatch.undo()
    assert load_checkpoint(p)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_json_and_csv(tmp_path):
    write_json(tmp_path / "r.json", {"a": float("nan"), "t": torch.tensor([1.5, 2.0]), "b": (1, 2)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "t": [1.5, 2.0], "b": [1, 2]}
    rows = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "acc": 0.9}]
    write_csv(tmp_path / "m.csv", rows)
    with open(tmp_path / "m.csv") as fh:
        got = list(csv.DictReader(fh))
    assert got == [{"epoch": "1", "loss": "0.5", "acc": ""}, {"epoch": "2", "loss": "0.25", "acc": "0.9"}]


def test_checkpoint_roundtrip(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", _ckpt(extra=[1, (2, 3)], rng=torch.get_rng_state()))
    got = load_checkpoint(p)
    assert torch.equal(got["model_state"]["w"], torch.arange(3.0))
    assert got["extra"] == [1, (2, 3)]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_safe_load_refuses_non_tensor_pickle(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": Evil()}, p)  # bypasses save_checkpoint
    refused = r"holds non-tensor objects \(unsupported GLOBAL (posix|nt)\.system\) and is refused"
    with pytest.raises(CheckpointError, match=refused) as info:
        load_checkpoint(p, require_keys=())
    assert "weights_only set to False" not in str(info.value)  # torch's dangerous advice is dropped
    assert "weights_only` set to `False" not in str(info.value)
    p2 = tmp_path / "plain.pkl"
    p2.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(CheckpointError, match=refused):
        load_checkpoint(p2, require_keys=())


def test_save_refuses_unsafe_payload(tmp_path):
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint(tmp_path / "c.pt", {"f": Evil()})
    assert not (tmp_path / "c.pt").exists()


def test_corrupt_truncated_missing(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", _ckpt())
    data = p.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "t.pt")
    (tmp_path / "g.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 1}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks the key"):
        load_checkpoint(tmp_path / "partial.pt")
    bad = _ckpt()
    bad["format"] = "something-else"
    torch.save(bad, tmp_path / "fmt.pt")
    with pytest.raises(CheckpointError, match="format 'something-else'"):
        load_checkpoint(tmp_path / "fmt.pt")


def test_config_mismatch_message():
    with pytest.raises(CheckpointError, match="checkpoint has width=32, model has width=16"):
        check_config_match({"width": 32, "num_classes": 10}, {"width": 16, "num_classes": 10})
    with pytest.raises(CheckpointError, match="augment=<missing>|augment='<missing>'"):
        check_config_match({"width": 32}, {"width": 32, "augment": 2})
    with pytest.raises(CheckpointError, match="data='digits'.*data='circles'"):
        check_config_match({"data": "digits"}, {"data": "circles"}, what="this run")
    check_config_match({"width": 32, "method": "euler"}, {"width": 32, "method": "dopri5"},
                       ignore=["method"])
    check_config_match({"k": (1, 2)}, {"k": [1, 2]})  # tuple/list round trip is not a mismatch


def test_bad_types(tmp_path):
    with pytest.raises(TypeError, match="data must be bytes"):
        atomic_write_bytes(tmp_path / "x", "text")
    with pytest.raises(TypeError, match="text must be str"):
        atomic_write_text(tmp_path / "x", b"bytes")
    with pytest.raises(TypeError, match="payload must be a mapping"):
        save_checkpoint(tmp_path / "x", [1])
