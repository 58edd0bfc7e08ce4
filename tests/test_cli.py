"""Tests of the ``odenet`` command line: train, resume, compare, errors, ``python -m odenet``."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import solvers
from odenet.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_SOLVERS = "implicit_euler" in solvers.METHODS and "adjoint" in solvers.GRADIENT_MODES


def test_train_then_resume(tmp_path, capsys):
    out = str(tmp_path / "r")
    base = ["train", "--model", "resnet", "--data", "circles", "--width", "8", "--device", "cpu", "--out", out]
    assert main(base + ["--epochs", "1"]) == 0
    text = capsys.readouterr().out
    assert "epoch 1/1" in text and "done: test accuracy" in text
    rows = json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]
    assert len(rows) == 1 and 0 <= rows[0]["test_acc"] <= 1 and rows[0]["nfe_forward"] == 4
    # rerunning into the same directory without --resume is refused ...
    assert main(base + ["--epochs", "2"]) == 2
    assert "already holds checkpoint.pt" in capsys.readouterr().err
    # ... --resume continues where it stopped
    assert main(base + ["--epochs", "2", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    rows = json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_resume_with_another_model_shape_is_refused(tmp_path, capsys):
    out = str(tmp_path / "r")
    base = ["train", "--data", "circles", "--device", "cpu", "--out", out, "--quiet"]
    assert main(base + ["--width", "8", "--epochs", "1"]) == 0
    assert main(base + ["--width", "16", "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "hidden=8, model has hidden=16" in err and "Traceback" not in err


def test_corrupt_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    rc = main(["train", "--data", "circles", "--device", "cpu", "--out", str(out), "--epochs", "1", "--resume"])
    assert rc == 2
    assert "corrupt or unsafe" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["train", "--model", "transformer"], "invalid choice: 'transformer'"),
    (["train", "--data", "mnist"], "invalid choice: 'mnist'"),
    (["compare", "--models", "resnet,mlp"], "unknown name"),
    (["train", "--epochs", "0"], "positive integer"),
])
def test_bad_arguments_exit_2(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", "--data", "circles", "--device", "cpu", "--out", str(tmp_path), "--method", "rk45", "--epochs", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown method 'rk45'" in err and "dopri5" in err and "Traceback" not in err


def _check_compare_outputs(out, models):
    res = json.loads((out / "results.json").read_text())
    assert sorted(res["models"]) == sorted(models)
    for name, r in res["models"].items():
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["nfe_forward_per_batch"] > 0 and r["train_time_s"] > 0 and r["peak_memory_mib"] > 0
        assert r["fgsm"]["0.0"] == r["test_accuracy"]  # epsilon 0 is the clean accuracy exactly
        assert r["cross_solver"][name] == pytest.approx(r["test_accuracy"])  # its own solver
    for png in ("training_curves.png", "accuracy_vs_epsilon.png", "cross_solver.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    return res


def test_compare_tiny_resnet_only(tmp_path, capsys):
    out = tmp_path / "c"
    rc = main(["compare", "--models", "resnet", "--solvers", "resnet", "--epochs", "1", "--limit-train", "128",
               "--limit-test", "64", "--width", "8", "--epsilons", "0,0.1", "--out", str(out), "--quiet"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "test acc %" in table and "FGSM 0.1" in table and "as resnet" in table
    _check_compare_outputs(out, ["resnet"])


@pytest.mark.skipif(not FULL_SOLVERS, reason="solvers lacks implicit_euler or the adjoint")
def test_compare_three_views_tiny(tmp_path, capsys):
    out = tmp_path / "c"
    rc = main(["compare", "--epochs", "1", "--limit-train", "128", "--limit-test", "64", "--width", "8",
               "--epsilons", "0,0.05", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    for name in ("resnet", "implicit", "node", "as node", "implicit_euler", "dopri5+adj"):
        assert name in table
    res = _check_compare_outputs(out, ["resnet", "implicit", "node"])
    m = res["models"]
    assert m["resnet"]["nfe_forward_per_batch"] == 4  # Euler, 4 steps
    assert m["node"]["nfe_backward_per_batch"] + m["node"]["vjp_backward_per_batch"] > 0  # adjoint solve
    for r in m.values():  # every view under every solver: an accuracy, or NaN with the failure reported
        cross = r["cross_solver"]
        assert sorted(cross) == ["implicit", "node", "resnet"]
        assert {s for s, v in cross.items() if math.isnan(v)} == set(r["cross_solver_errors"])
        assert all(0.0 <= v <= 1.0 for v in cross.values() if not math.isnan(v))


def test_python_dash_m_odenet(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "odenet", "train", "--data", "circles", "--epochs", "1",
                           "--width", "4", "--device", "cpu", "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "done: test accuracy" in proc.stdout
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal
    bad = subprocess.run([sys.executable, "-m", "odenet", "train", "--data", "circles", "--out", str(tmp_path / "m"),
                          "--epochs", "1", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "error:" in bad.stderr
    help_ = subprocess.run([sys.executable, "-m", "odenet", "--help"], capture_output=True, text=True, env=env,
                           timeout=60)
    assert help_.returncode == 0 and "compare" in help_.stdout
    assert torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)["epoch"] == 1


def _train_args(out, *extra):
    return ["train", "--data", "circles", "--epochs", "1", "--width", "4", "--device", "cpu", "--out", str(out),
            "--quiet", *extra]


def test_ctrl_c_exits_130_with_a_resume_hint(tmp_path, capsys, monkeypatch):
    import odenet.training._run as run

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train", interrupted)
    assert main(_train_args(tmp_path / "r")) == 130
    assert "interrupted; rerun with --resume" in capsys.readouterr().err


def test_overwrite_starts_afresh(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_train_args(out, "--seed", "1")) == 0
    first = torch.load(out / "checkpoint.pt", weights_only=True)["model_state"]
    assert main(_train_args(out, "--seed", "2")) == 2  # refused without --overwrite or --resume
    assert main(_train_args(out, "--seed", "2", "--overwrite")) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["run_config"]["seed"] == 2
    assert any(not torch.equal(first[k], ck["model_state"][k]) for k in first)  # a new run, not the old one
    assert [r["epoch"] for r in json.loads((out / "metrics.json").read_text())["metrics"]] == [1]


def test_weight_decay_field_and_expansion_reach_the_model(tmp_path):
    from odenet.fields import MLPField, ParabolicMLPField
    from odenet.training import load_model

    out = tmp_path / "p"
    assert main(_train_args(out, "--weight-decay", "0.01", "--expansion", "0.5")) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert [g["weight_decay"] for g in ck["optimizer_state"]["param_groups"]] == [0.01]
    field = load_model(out / "checkpoint.pt").blocks[0].field
    assert type(field) is ParabolicMLPField and field.expansion == 0.5
    out = tmp_path / "u"
    assert main(_train_args(out, "--field", "unconstrained")) == 0
    field = load_model(out / "checkpoint.pt").blocks[0].field
    assert type(field) is MLPField
    assert torch.load(out / "checkpoint.pt", weights_only=True)["optimizer_state"]["param_groups"][0]["weight_decay"] == 0.0


def test_compare_cli_defaults_are_the_config_defaults(monkeypatch, tmp_path):
    """`odenet compare` with no flags runs CompareConfig's defaults (its help names them)."""
    import dataclasses

    import odenet.jobs._compare as cmp
    from odenet.cli import build_parser

    seen = []
    monkeypatch.setattr(cmp, "compare", lambda cfg: seen.append(cfg) or {"table": ""})
    assert main(["compare", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    got, want = seen[-1], cmp.CompareConfig()
    for f in dataclasses.fields(cmp.CompareConfig):
        if f.name not in ("out", "quiet"):
            g, w = getattr(got, f.name), getattr(want, f.name)
            assert (list(g) == list(w)) if isinstance(w, tuple) else g == w, f.name
    assert (want.batch_size, want.lr, want.spectral_norm, want.expansion, want.head, want.lr_schedule,
            want.label_smoothing, want.kinetic) == (32, 2e-2, True, 0.0, "flatten", "onecycle", 0.1, 1e-4)
    text = build_parser()._subparsers._group_actions[0].choices["compare"].format_help()
    for phrase in ("(default 32)", "(default 2e-2)", "(default 0.1)", "(default 1e-4)", "default on)", "(default 0.0)", "(default flatten)",
                   "(default onecycle)", "--no-spectral-norm", "(random start; default 10; 0 skips PGD)",
                   "(default 128; 0 skips PGD)"):
        assert phrase in " ".join(text.split()), phrase
    # a flag given overrides the default
    assert main(["compare", "--out", str(tmp_path / "d"), "--quiet", "--no-spectral-norm", "--expansion", "2",
                 "--batch-size", "64"]) == 0
    assert (seen[-1].spectral_norm, seen[-1].expansion, seen[-1].batch_size) == (False, 2.0, 64)


def test_the_parsers_name_lists_agree_with_the_package():
    """cli.py repeats the series models and lr schedules so that parsing imports no torch."""
    from odenet import cli
    from odenet.models._series_registry import SERIES_MODELS
    from odenet.training._loop import LR_SCHEDULES

    assert tuple(cli._SERIES_MODELS) == tuple(SERIES_MODELS)
    assert tuple(cli._LR_SCHEDULES) == tuple(LR_SCHEDULES)
