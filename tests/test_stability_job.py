"""Smoke tests of `odenet stability` on a claim subset: Python function and CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import odenet

REPO = Path(__file__).resolve().parents[1]


def test_python_function(tmp_path):
    out = tmp_path / "stab"
    payload = odenet.stability(out=str(out), claims=["A1", "G2"], quiet=True)
    ids = [c["id"] for c in payload["claims"]]
    assert ids == ["A1", "G2"]
    data = json.loads((out / "results.json").read_text())
    assert [c["holds"] for c in data["claims"]] == [True, True]
    assert {"id", "statement", "expected", "measured", "tolerance", "holds"} <= set(data["claims"][0])
    assert "| A1 |" in (out / "claims.md").read_text()


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="valid: A1"):
        odenet.StabilityConfig(out=str(tmp_path), claims=["Z9"])
    with pytest.raises(ValueError, match="robustness"):
        odenet.StabilityConfig(out=str(tmp_path), claims=["C2"])
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="existing file"):
        odenet.stability(out=str(f), claims=["A1"], quiet=True)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "odenet", "stability", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_cli_subset(tmp_path):
    out = tmp_path / "cli"
    r = _cli("--claims", "A1,G2", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "results.json").read_text())
    assert [c["id"] for c in data["claims"]] == ["A1", "G2"]


@pytest.mark.slow
def test_plots(tmp_path):
    out = tmp_path / "plots"
    odenet.stability(out=str(out), claims=["A5", "D2"], quiet=True)
    assert (out / "gradient_vs_depth.png").stat().st_size > 1000
    assert (out / "norm_growth.png").stat().st_size > 1000


def test_cli_bad_input(tmp_path, capsys):
    from odenet.cli import main

    f = tmp_path / "f"
    f.write_text("x")
    for args in (["--out", str(f)], ["--out", str(f / "sub")], ["--out", str(tmp_path), "--claims", "A1,Q7"]):
        assert main(["stability", *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root can write anywhere
            assert main(["stability", "--out", str(ro / "x")]) == 2
            assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)
