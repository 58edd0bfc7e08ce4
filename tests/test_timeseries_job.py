"""Smoke tests of the ``timeseries`` job: the Python function and ``python3 -m odenet timeseries``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import odenet

ROOT = Path(__file__).resolve().parents[1]


def test_timeseries_function_tiny(tmp_path):
    report = odenet.timeseries(data=["JapaneseVowels", "sines"], drop=[0.3, 0.5], models=["gru_dt", "ode_rnn"],
                               epochs=1, n_sines=24, limit_train=16, limit_test=16, out=str(tmp_path), quiet=True)
    runs = report["runs"]
    assert len(runs) == 2 * 2 + 2
    keys = {"data", "task", "drop", "model", "train_time_s", "nfe_forward_per_batch", "nfe_backward_per_batch"}
    for r in runs:
        assert keys <= set(r)
        assert ("test_accuracy" in r) == (r["task"] == "classification")
        assert ("test_mse" in r) == (r["task"] == "extrapolation")
    assert any(r["nfe_forward_per_batch"] > 0 for r in runs if r["model"] == "ode_rnn")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == len(runs)
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert {"accuracy_vs_drop_JapaneseVowels.png", "predictions_sines_extrapolation.png"} <= pngs
    assert "gru_dt" in report["table"]


def test_timeseries_bad_names_before_work(tmp_path):
    with pytest.raises(ValueError, match="JapaneseVowels"):
        odenet.timeseries(data=["JapaneseVowel"], out=str(tmp_path / "o"), quiet=True)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="unknown model"):
        odenet.timeseries(models=["lstm"], out=str(tmp_path / "o"), quiet=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        odenet.timeseries(models=["gru_dt"], out=str(tmp_path / "file"), quiet=True)


def test_timeseries_time_scale_applies_to_uea_sets_only(tmp_path):
    from odenet.jobs import TimeseriesConfig, load_series_data

    assert TimeseriesConfig().time_scale == 0.1  # the job's default (docs/timeseries.md)
    d = load_series_data("JapaneseVowels", time_scale=0.1)
    n = int(d.train.lengths[0])
    torch.testing.assert_close(d.train.times[0, :n], torch.arange(n, dtype=torch.float64) * 0.1)
    s1, s2 = load_series_data("sines", n_sines=8), load_series_data("sines", n_sines=8, time_scale=0.1)
    assert torch.equal(s1.train.times, s2.train.times)
    with pytest.raises(ValueError, match="time_scale"):
        odenet.timeseries(models=["gru_dt"], time_scale=0.0, out=str(tmp_path / "o"), quiet=True)
    assert not (tmp_path / "o").exists()


def test_timeseries_cli_tiny(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "odenet", "timeseries", "--data", "JapaneseVowels", "--drop", "0.5",
           "--models", "gru_d,ncde", "--epochs", "1", "--limit-train", "12", "--limit-test", "12", "--quiet",
           "--no-plots", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "ncde" in res.stdout and (tmp_path / "results.json").exists()
    bad = subprocess.run(cmd[:4] + ["--data", "NoSuchSet", "--out", str(tmp_path / "x")], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
    assert bad.returncode == 2 and "not in the bundled" in bad.stderr
    bad = subprocess.run(cmd[:4] + ["--time-scale", "0", "--out", str(tmp_path / "y")], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
    assert bad.returncode == 2 and "--time-scale" in bad.stderr


def test_timeseries_lr_schedule_per_model(tmp_path):
    from odenet.training import scheduled_lr

    report = odenet.timeseries(data=["sines"], models=["gru_dt", "ode_rnn"], epochs=2, n_sines=40,
                               limit_train=16, limit_test=8, lr_schedule={"gru_dt": "cosine"},
                               out=str(tmp_path), quiet=True, plots=False)
    runs = {r["model"]: r for r in report["runs"]}
    assert runs["gru_dt"]["lr_schedule"] == "cosine" and runs["ode_rnn"]["lr_schedule"] == "constant"
    # one batch of 16 per epoch: the rate used in epoch 2 is the schedule's at progress 1/2
    assert runs["gru_dt"]["history"][1]["lr"] == pytest.approx(scheduled_lr(1e-2, "cosine", 0.5))
    assert [r["lr"] for r in runs["ode_rnn"]["history"]] == [1e-2, 1e-2]
    one = odenet.timeseries(data=["sines"], models=["gru_dt"], epochs=2, n_sines=40, limit_train=16,
                            limit_test=8, lr_schedule="cosine", out=str(tmp_path / "b"), quiet=True, plots=False)
    assert one["runs"][0]["test_mse"] == runs["gru_dt"]["test_mse"]  # the same run, named either way
    for bad, match in [("linear", "unknown lr_schedule"), ({"lstm": "cosine"}, "unknown model"),
                       ({"ode_rnn": "warm"}, "unknown lr_schedule"), (3, "schedule name or")]:
        with pytest.raises(ValueError, match=match):
            odenet.timeseries(models=["gru_dt"], lr_schedule=bad, out=str(tmp_path / "o"), quiet=True)
    assert not (tmp_path / "o").exists()


def test_timeseries_cli_lr_schedule_parsing():
    import argparse

    from odenet.cli import _lr_schedules

    assert _lr_schedules("cosine") == "cosine"
    assert _lr_schedules("latent_ode=cosine, ode_rnn=constant") == {"latent_ode": "cosine", "ode_rnn": "constant"}
    for bad in ("linear", "lstm=cosine", "ode_rnn=warm"):
        with pytest.raises(argparse.ArgumentTypeError, match="schedule"):
            _lr_schedules(bad)


def test_timeseries_passes_weight_decay_and_ema_to_fit(tmp_path):
    """--weight-decay / --ema-decay reach odenet.fit: the job's run equals fit called directly."""
    from odenet.jobs import load_series_data

    kw = dict(data=["JapaneseVowels"], drop=[0.3], models=["gru_dt"], epochs=2, limit_train=32, limit_test=32,
              quiet=True, plots=False)
    report = odenet.timeseries(out=str(tmp_path / "a"), weight_decay=1e-3, ema_decay=0.5, **kw)
    plain = odenet.timeseries(out=str(tmp_path / "b"), **kw)
    d = load_series_data("JapaneseVowels", time_scale=0.1)
    d = odenet.jobs._timeseries._limit(d, 32, 32).dropped(0.3, seed=0)
    odenet.set_seed(0)
    m = odenet.models.build_series_model("gru_dt", d.channels, num_classes=d.num_classes, hidden=32)
    res = odenet.fit(m, odenet.training.series_task(d), epochs=2, batch_size=32, lr=1e-2, seed=0, device="cpu",
                     quiet=True, weight_decay=1e-3, ema_decay=0.5)
    got = [r["test_loss"] for r in report["runs"][0]["history"]]
    assert got == [r["test_loss"] for r in res.metrics]
    assert got != [r["test_loss"] for r in plain["runs"][0]["history"]]
    for bad in (dict(weight_decay=-1.0), dict(ema_decay=1.0), dict(ema_decay=0.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            odenet.timeseries(out=str(tmp_path / "c"), **{**kw, **bad})
    assert not (tmp_path / "c").exists()


def test_timeseries_cli_refuses_bad_recipe_flags(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for flag, value in (("--ema-decay", "1"), ("--weight-decay", "-0.1")):
        bad = subprocess.run([sys.executable, "-m", "odenet", "timeseries", flag, value, "--out", str(tmp_path / "x")],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert bad.returncode == 2 and flag in bad.stderr, bad.stderr
    assert not (tmp_path / "x").exists()


def test_timeseries_latent_ode_options_reach_the_latent_ode_only(tmp_path):
    """latent_ode={...} (--latent-ode) builds the Latent ODE with those settings and no other model."""
    from odenet.jobs import load_series_data

    kw = dict(data=["sines"], models=["latent_ode", "ode_rnn"], epochs=1, n_sines=40, limit_train=16,
              limit_test=8, quiet=True, plots=False)
    opts = {"latent": 4, "units": 8, "n_samples": 2, "kl_weight": 0.5}
    report = odenet.timeseries(out=str(tmp_path / "a"), latent_ode=opts, **kw)
    plain = odenet.timeseries(out=str(tmp_path / "b"), **kw)
    runs, base = ({r["model"]: r for r in rep["runs"]} for rep in (report, plain))
    assert runs["latent_ode"]["model_options"] == opts and runs["ode_rnn"]["model_options"] == {}
    assert base["latent_ode"]["model_options"] == {}
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["config"]["latent_ode"] == opts and saved["runs"][0]["model_options"] == opts
    d = odenet.jobs._timeseries._limit(load_series_data("sines", n_sines=40), 16, 8)
    odenet.set_seed(0)
    m = odenet.models.build_series_model("latent_ode", 1, hidden=32, **opts)
    assert (m.latent, m.n_samples, m.kl_weight) == (4, 2, 0.5)
    res = odenet.fit(m, odenet.training.series_task(d), epochs=1, batch_size=64, lr=1e-2, seed=0, device="cpu",
                     quiet=True)
    assert runs["latent_ode"]["test_mse"] == res.metrics[-1]["test_mse"]
    assert runs["latent_ode"]["test_mse"] != base["latent_ode"]["test_mse"]
    assert [r["test_mse"] for r in runs["ode_rnn"]["history"]] == [r["test_mse"] for r in base["ode_rnn"]["history"]]
    for bad, match in [({"hidden": 8}, "unknown setting"), ({"n_samples": 0}, "n_samples"),
                       ({"latent": 2.5}, "latent"), ({"obs_std": 0.0}, "obs_std"), ({"kl_weight": -1.0}, "kl_weight"),
                       ({"kl_warmup": True}, "kl_warmup"), ("n_samples=3", "mapping")]:
        with pytest.raises(ValueError, match=match):
            odenet.timeseries(out=str(tmp_path / "c"), **{**kw, "latent_ode": bad})
    assert not (tmp_path / "c").exists()


def test_timeseries_cli_latent_ode_parsing():
    import argparse
    import inspect

    from odenet.cli import _LATENT_ODE_OPTIONS, _latent_ode_options, build_parser
    from odenet.jobs._timeseries import LATENT_ODE_OPTIONS

    assert _LATENT_ODE_OPTIONS == LATENT_ODE_OPTIONS  # the parser's copy agrees with the job's
    params = inspect.signature(odenet.models.LatentODE.__init__).parameters
    assert all(k in params and type(params[k].default) is t for k, t in LATENT_ODE_OPTIONS.items())
    args = build_parser().parse_args(["timeseries", "--latent-ode", "n_samples=3, kl_weight=0.1", "--out", "x"])
    assert args.latent_ode == {"n_samples": 3, "kl_weight": 0.1} and type(args.latent_ode["n_samples"]) is int
    assert build_parser().parse_args(["timeseries", "--out", "x"]).latent_ode == {}
    for bad in ("hidden=3", "n_samples", "n_samples=0", "latent=1.5", "obs_std=0", "kl_weight=nan", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            _latent_ode_options(bad)
