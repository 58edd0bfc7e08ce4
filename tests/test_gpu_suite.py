"""benchmarks/gpu_suite.py, the one-call GPU check, runs end to end (on the CPU here, tiny)."""

import json
import math

import pytest

from benchmarks import gpu_suite


def test_smoke_run_on_cpu_writes_every_case(tmp_path):
    res = gpu_suite.main(["--device", "cpu", "--batch", "8", "--dim", "3", "--repeats", "1", "--no-compare",
                          "--out", str(tmp_path)])
    cases = {r["case"].split(",")[0].split(" ")[0] for r in res["rows"]}
    assert cases == {"adaptive", "continuous", "per-sample", "euler"}
    impls = {(r["case"], r["impl"]) for r in res["rows"]}
    assert ("adaptive dopri5 forward, tol 1e-6", "torchdiffeq") in impls  # torchdiffeq is a test dependency
    try:  # torchode comes with the bench extra; when present it is measured too
        import torchode  # noqa: F401

        assert ("adaptive dopri5 forward, tol 1e-6", "torchode") in impls
    except ImportError:
        assert res["meta"]["peers"] == ["torchdiffeq"]
    for r in res["rows"]:
        assert r["seconds"] > 0 and math.isfinite(r["ratio"]) and r["nfe"] > 0
    # the reference of each case has ratio exactly 1
    assert sum(r["ratio"] == 1.0 for r in res["rows"]) >= 5
    on_disk = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert on_disk["rows"] == res["rows"]
    assert "| adaptive dopri5 forward, tol 1e-6 | solvers |" in (tmp_path / "gpu_suite.md").read_text()


def test_refuses_cuda_without_cuda(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as e:
        gpu_suite.main(["--device", "cuda"])
    assert e.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bad_sizes_are_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_suite.main(["--device", "cpu", "--batch", "0"])
    assert "--batch must be a positive integer" in capsys.readouterr().err
