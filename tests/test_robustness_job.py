"""The ``odenet robustness`` job: sanity checks and claims on plain records, a tiny run through
the Python function and through ``python3 -m odenet robustness``, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import odenet
from odenet.jobs._robustness_checks import claim_c3, claim_h1, contraction_ratios, sanity_checks

ROOT = Path(__file__).resolve().parents[1]


def _suite(pgd, fgsm, square, clean=0.9):
    def rec(d):
        return {"accuracy": {str(k): v for k, v in d.items()}}
    return {"clean_accuracy": clean, "attacks": {"pgd": rec(pgd), "fgsm": rec(fgsm), "square": rec(square)},
            "worst": {str(k): min(pgd[k], fgsm[k], square[k]) for k in pgd}, "strongest": {"0.1": "square"}}


def test_sanity_checks_pass_and_fail_as_stated():
    ok = sanity_checks(_suite({0.0: 0.9, 0.1: 0.5}, {0.0: 0.9, 0.1: 0.6}, {0.0: 0.9, 0.1: 0.51}))
    assert ok["valid"]
    bad = sanity_checks(_suite({0.0: 0.9, 0.1: 0.5}, {0.0: 0.8, 0.1: 0.4}, {0.0: 0.9, 0.1: 0.45}))
    assert not bad["valid"]
    assert not bad["eps0_is_clean"]["ok"] and not bad["pgd_le_fgsm"]["ok"]
    assert not bad["no_gradient_masking"]["ok"]  # square 45 % < PGD 50 % - 2 points
    assert bad["no_gradient_masking"]["failures"][0]["strongest"] == "square"
    rising = sanity_checks(_suite({0.0: 0.9, 0.1: 0.5, 0.2: 0.55}, {0.0: 0.9, 0.1: 0.6, 0.2: 0.6},
                                  {0.0: 0.9, 0.1: 0.6, 0.2: 0.6}))
    assert not rising["non_increasing"]["ok"] and "pgd" in rising["non_increasing"]["failures"]


def test_claims_c3_h1_from_records():
    pgd = {"resnet": {0: 0.30, 1: 0.32, 2: 0.31}, "implicit": {0: 0.40, 1: 0.41, 2: 0.39}}
    clean = {"resnet": {0: 0.9, 1: 0.9, 2: 0.9}, "implicit": {0: 0.92, 1: 0.9, 2: 0.91}}
    c3 = claim_c3(pgd, clean, {"resnet": 2.0, "implicit": 2.0}, 0.1)
    assert c3.holds is True
    assert c3.measured["gap_vs_resnet"]["implicit"]["mean"] == pytest.approx(0.09)
    c3b = claim_c3({"resnet": pgd["implicit"], "implicit": pgd["resnet"]}, clean, {}, 0.1)
    assert c3b.holds is False
    h1 = claim_h1({"resnet_sn": {0: 0.2, 1: 0.3}, "resnet": {0: 0.5, 1: 0.6}},
                  {"resnet_sn": {0: 0.8, 1: 0.8}, "resnet": {0: 0.9, 1: 0.9}}, {"resnet_sn": "resnet"}, 0.05)
    assert h1.holds is True and h1.measured["resnet_sn"]["clean_cost"] == pytest.approx(0.1)
    assert claim_h1({}, {}, {"resnet_sn": "resnet"}, 0.05).holds == "report"


def test_contraction_ratio_of_implicit_block_with_nu_le_0_is_at_most_one():
    data = odenet.load_dataset("digits", limit_train=32, limit_test=16)
    torch.manual_seed(0)
    model = odenet.build_view_model("implicit", data, width=4, field="parabolic", expansion=0.0)
    x = data.x_test[:8]
    x_adv = x + 0.3 * torch.randn_like(x)
    rho = contraction_ratios(model, x, x_adv)
    assert len(rho) == 8 and float(rho.max()) <= 1 + 1e-6


def test_tiny_run_through_the_python_function(tmp_path):
    res = odenet.robustness(out=str(tmp_path), quick=True, variants=("resnet", "resnet_sn"), runs=2,
                            epsilons=(0.0, 0.05, 0.1), n_test=12, limit_train=120, pgd_steps=4,
                            square_queries=5, quiet=True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [c["id"] for c in saved["claims"]] == ["C2", "C3", "H1"]
    s = saved["summary"]["resnet"]["attacks"]["pgd"]["0.05"]
    assert set(s) == {"mean", "std", "n_runs"} and s["n_runs"] == 2
    for name, run in saved["runs"].items():
        assert "valid" in run["sanity"], name
        assert run["attacks"]["pgd"]["accuracy"]["0.0"] == run["clean_accuracy"]
    assert (tmp_path / "robustness.md").is_file() and (tmp_path / "robustness_by_view.png").is_file()
    assert res["summary"] == saved["summary"]
    assert saved["time_s"]["workers"] == 2  # the default: two processes
    # one task per model, seeded on its own: one process gives the same numbers as two, at the
    # workers' thread count (each worker runs max(1, threads // 2) threads; another thread count
    # sums in another order: the contraction ratios then move in the 7th digit)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        one = odenet.robustness(out=str(tmp_path / "w1"), quick=True, variants=("resnet", "resnet_sn"), runs=2,
                                epsilons=(0.0, 0.05, 0.1), n_test=12, limit_train=120, pgd_steps=4,
                                square_queries=5, quiet=True, plots=False, workers=1)
    finally:
        torch.set_num_threads(threads)
    assert one["summary"] == saved["summary"] and one["contraction_ratio"] == saved["contraction_ratio"]
    assert {k: v["attacks"]["square"]["accuracy"] for k, v in one["runs"].items()} == \
        {k: v["attacks"]["square"]["accuracy"] for k, v in saved["runs"].items()}
    with pytest.raises(ValueError, match="workers"):
        odenet.robustness(out=str(tmp_path), workers=0)
    with pytest.raises(ValueError, match="variant"):
        odenet.robustness(out=str(tmp_path), variants=("vgg",))
    with pytest.raises(ValueError, match="epsilons"):
        odenet.robustness(out=str(tmp_path), epsilons=(0.0, 1.5))
    with pytest.raises(ValueError, match="models_from"):
        odenet.robustness(out=str(tmp_path), models_from=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="checkpoint"):
        odenet.robustness(out=str(tmp_path / "o2"), models_from=str(tmp_path))


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "odenet", "robustness", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_cli_out_checked_before_any_work(tmp_path, capsys):
    from odenet.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    for out, what in ((f, "existing file"), (f / "sub", "under the file"), ("/proc/odenet-test", "writable")):
        assert main(["robustness", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and what in err, err
    assert main(["robustness", "--out", str(tmp_path / "o"), "--models-from", str(tmp_path)]) == 2
    assert "checkpoint" in capsys.readouterr().err
    r = _cli("--out", str(f))  # the real entry point, once
    assert r.returncode == 2 and r.stderr.strip().startswith("odenet robustness: error: --out")


@pytest.mark.slow
def test_cli_quick_resnet_only(tmp_path):
    r = _cli("--out", str(tmp_path / "o"), "--quick", "--variants", "resnet", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o" / "results.json").read_text())["claims"][0]["id"] == "C2"
