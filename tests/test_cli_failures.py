"""Regression tests for the CLI failures of issue 14 and the ``compare`` behaviours of issue 16.

Each test names the failure it guards against. Training runs are kept tiny (circles, a few
dozen samples, one epoch) so the file runs in seconds.
"""

import json
import os
import stat

import pytest
import torch

import solvers
from odenet import ODEBlock, ParabolicMLPField
from odenet._io import (CheckpointError, check_out_dir, load_checkpoint, save_checkpoint,
                        write_json)
from odenet.cli import build_parser, main
from odenet.jobs import _compare
from odenet.jobs._compare import CompareConfig

TINY = ["--data", "circles", "--width", "8", "--device", "cpu", "--limit-train", "64",
        "--limit-test", "32", "--quiet"]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _no_training(monkeypatch):
    """Make any training epoch fail loudly: the checks must come before training."""
    from odenet.training import _loop

    def boom(*a, **k):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(_loop, "_train_epoch", boom)


# ----------------------------------------------------------------------------- --out checks

@pytest.mark.parametrize("command", ["train", "compare"])
def test_out_is_checked_before_training(tmp_path, capsys, monkeypatch, command):
    _no_training(monkeypatch)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    argv = [command] + TINY + ["--epochs", "1"]
    assert main(argv + ["--out", str(a_file)]) == 2
    _one_line_error(capsys, "is an existing file", str(a_file))
    assert main(argv + ["--out", str(a_file / "sub")]) == 2
    _one_line_error(capsys, "lies under the file", str(a_file))
    assert main(argv + ["--out", ""]) == 2
    _one_line_error(capsys, "--out is empty")
    assert not any(p.name != "file.txt" for p in tmp_path.iterdir())  # nothing written


def test_out_not_writable_is_refused(tmp_path, capsys, monkeypatch):
    # a read-only directory cannot be made as root (root writes anyway), so the write probe
    # is made to fail the way the OS fails it for a read-only directory
    import odenet._io as io_mod

    ro = tmp_path / "ro"
    ro.mkdir()
    real = io_mod.tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and os.path.abspath(dir) == str(ro):
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", mkstemp)
    _no_training(monkeypatch)
    assert main(["train"] + TINY + ["--epochs", "1", "--out", str(ro / "run")]) == 2
    _one_line_error(capsys, "cannot write into", "Permission denied")
    with pytest.raises(ValueError, match="cannot write into"):
        check_out_dir(ro)


# ----------------------------------------------------------------------------- compare failures

def _fail_view(monkeypatch, view, exc):
    real = _compare.fit

    def fit(model, data, **kw):
        if kw.get("label") == view:
            raise exc
        return real(model, data, **kw)

    monkeypatch.setattr(_compare, "fit", fit)


def test_compare_reports_a_numerical_failure_and_strict_exits_1(tmp_path, capsys, monkeypatch):
    _fail_view(monkeypatch, "implicit", solvers.RootFinderError("the root finder diverged"))
    argv = ["compare"] + TINY + ["--epochs", "1", "--models", "resnet,implicit", "--solvers", "resnet",
                                 "--no-plots", "--epsilons", "0"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "results.json").read_text())
    assert report["failed"] == {"implicit": "RootFinderError: the root finder diverged"}
    assert list(report["models"]) == ["resnet"]  # the other view still trained and was measured
    assert "implicit: training FAILED (RootFinderError" in report["table"]
    assert "training failed for implicit" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "b"), "--strict"]) == 1


@pytest.mark.parametrize("exc", [RuntimeError("a plain bug"), torch.OutOfMemoryError("CUDA out of memory")])
def test_compare_propagates_non_numerical_errors(tmp_path, monkeypatch, exc):
    _fail_view(monkeypatch, "resnet", exc)
    with pytest.raises(type(exc), match=str(exc)):
        main(["compare"] + TINY + ["--epochs", "1", "--models", "resnet", "--no-plots",
                                   "--out", str(tmp_path / "c")])


def test_cross_solver_evaluation_propagates_non_numerical_errors(tmp_path, monkeypatch):
    def evaluate(*a, **k):
        raise RuntimeError("a plain bug in evaluation")

    monkeypatch.setattr(_compare, "evaluate", evaluate)
    with pytest.raises(RuntimeError, match="a plain bug in evaluation"):
        _compare.compare(data="circles", models=("resnet",), solvers=("resnet", "node"), epochs=1,
                         width=8, limit_train=64, limit_test=32, device="cpu", quiet=True,
                         plots=False, epsilons=(0.0,), out=str(tmp_path / "x"))


def test_compare_resumes_each_view_from_its_checkpoint(tmp_path):
    # constant lr: a schedule over all batches depends on the total epoch count, which this
    # simulated interruption (a 1-epoch run resumed as a 2-epoch one) changes
    kw = dict(data="circles", models=("resnet",), solvers=("resnet",), width=8, limit_train=64,
              limit_test=32, device="cpu", quiet=True, plots=False, epsilons=(0.0,),
              out=str(tmp_path / "r"), lr_schedule="constant")
    full = _compare.compare(epochs=2, **dict(kw, out=str(tmp_path / "full")))
    _compare.compare(epochs=1, **kw)
    resumed = _compare.compare(epochs=2, resume=True, **kw)
    h_full, h_res = full["models"]["resnet"]["history"], resumed["models"]["resnet"]["history"]
    assert [r["epoch"] for r in h_res] == [1, 2]
    # an interrupted-and-resumed job ends with the uninterrupted job's losses (exact resume)
    for a, b in zip(h_full, h_res):
        assert a["train_loss"] == b["train_loss"] and a["test_acc"] == b["test_acc"]


# ----------------------------------------------------------------------------- checkpoints

def _trained(tmp_path):
    out = tmp_path / "run"
    assert main(["train"] + TINY + ["--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("field, value, needle", [
    ("epoch", -3, "field 'epoch' must be a non-negative integer"),
    ("epoch", "1", "field 'epoch' must be a non-negative integer"),
    ("metrics", 5, "field 'metrics' must be a list of per-epoch dicts"),
    ("rng", {"torch": torch.get_rng_state()}, "field 'rng' must be a dict"),
    ("model_state", [1, 2], "field 'model_state' must be a dict"),
])
def test_crafted_checkpoint_fields_are_refused(tmp_path, capsys, field, value, needle):
    out = _trained(tmp_path)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    ckpt[field] = value
    save_checkpoint(out / "checkpoint.pt", ckpt)  # a valid checksum over the crafted payload
    capsys.readouterr()
    assert main(["train"] + TINY + ["--epochs", "2", "--out", str(out), "--resume"]) == 2
    _one_line_error(capsys, needle)


def test_missing_rng_key_is_refused(tmp_path, capsys):
    out = _trained(tmp_path)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    del ckpt["rng"]
    save_checkpoint(out / "checkpoint.pt", ckpt)
    capsys.readouterr()
    assert main(["train"] + TINY + ["--epochs", "2", "--out", str(out), "--resume"]) == 2
    _one_line_error(capsys, "lacks ['rng']")


def test_flipped_byte_in_a_weight_is_refused(tmp_path):
    w = torch.arange(1000, dtype=torch.float32)
    p = save_checkpoint(tmp_path / "c.pt", {"format": "odenet-checkpoint-v1", "epoch": 0,
                                           "model_state": {"w": w}, "model_config": {},
                                           "model_kind": "X"})
    assert torch.equal(load_checkpoint(p)["model_state"]["w"], w)
    data = bytearray(p.read_bytes())
    at = bytes(data).find(w.numpy().tobytes())
    assert at > 0
    data[at + 2001] ^= 0x01  # one bit of one weight (within element 500)
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the stored sha256 checksum"):
        load_checkpoint(p)


def test_leftover_tmp_files_are_removed_and_outputs_are_0644(tmp_path):
    leftover = tmp_path / ".results.json.abc123.tmp"
    leftover.write_bytes(b"torn write")
    other = tmp_path / ".other.json.abc123.tmp"  # another destination's temporary: left alone
    other.write_bytes(b"x")
    p = write_json(tmp_path / "results.json", {"a": 1})
    assert not leftover.exists() and other.exists()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


# ----------------------------------------------------------------------------- flags

def test_resume_and_overwrite_together_are_refused(tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    assert main(["train"] + TINY + ["--out", str(tmp_path / "r"), "--resume", "--overwrite"]) == 2
    _one_line_error(capsys, "--resume and --overwrite contradict each other")


def test_compare_device_default_is_auto_and_says_so(capsys):
    assert build_parser().parse_args(["compare"]).device == "auto"
    assert CompareConfig().device == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--help"])
    assert "default: auto" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("eps", ["5", "0,1.5"])
def test_epsilons_beyond_the_input_range_are_refused(capsys, eps):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["compare", "--epsilons", eps])
    assert info.value.code == 2
    assert "must lie in [0, 1]" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"epsilons must be FGSM sizes in \[0, 1\]"):
        CompareConfig(epsilons=(float(eps.split(",")[-1]),)).validate()


# ----------------------------------------------------------------------------- ODEBlock

def test_block_refuses_unknown_options_at_configure():
    block = ODEBlock(ParabolicMLPField(3, hidden=4), method="euler", steps=2)
    with pytest.raises(ValueError, match="unknown option `bogus` for method 'euler'"):
        block.configure(options={"bogus": 1})
    with pytest.raises(ValueError, match="`root_finder` must be one of"):
        block.configure(method="implicit_euler", steps=4, options={"root_finder": "nope"})
    assert block.solver_config()["method"] == "euler" and block.solver_config()["options"] is None


def test_configure_inside_using_lasts_until_the_with_ends():
    block = ODEBlock(ParabolicMLPField(3, hidden=4), method="euler", steps=2)
    with block.using(steps=3):
        block.configure(steps=5)
        assert block.solver_config()["steps"] == 5
    assert block.solver_config()["steps"] == 2  # documented: using() restores everything
    assert "lasts only until its end" in ODEBlock.using.__doc__


def test_grid_constructor_gets_the_well_posedness_check():
    field = ParabolicMLPField(3, hidden=4, expansion=2.0)
    x = torch.randn(5, 3)
    coarse = ODEBlock(field, method="implicit_euler",
                      options={"grid_constructor": lambda f, y, t: torch.linspace(0, 1, 2, dtype=t.dtype)})
    with pytest.raises(ValueError, match="largest step 1 is not guaranteed well posed"):
        coarse(x)
    fine = ODEBlock(field, method="implicit_euler",
                    options={"grid_constructor": lambda f, y, t: torch.linspace(0, 1, 5, dtype=t.dtype)})
    ref = ODEBlock(field, method="implicit_euler", steps=4)
    assert torch.allclose(fine(x), ref(x), atol=1e-6)


def test_compare_writes_the_nfe_per_epoch_curve(tmp_path):
    report = _compare.compare(data="circles", models=("resnet", "node"), solvers=("resnet",), epochs=2,
                              width=8, limit_train=64, limit_test=32, device="cpu", quiet=True,
                              epsilons=(0.0,), out=str(tmp_path / "p"))
    png = tmp_path / "p" / "nfe_per_epoch.png"
    assert str(png) in report["plots"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["models"]["node"]["solver"]["gradient"] == "checkpointed_adjoint"
    assert "dopri5+adj(ckpt)" in report["table"]
    # the node view's backward work is counted (evaluations + VJPs of the checkpointed adjoint)
    assert all(r["vjp_backward"] > 0 for r in report["models"]["node"]["history"])
