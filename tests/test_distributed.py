"""DistributedDataParallel training under torchrun: 2 CPU processes (gloo).

The worker script trains an odenet model with ``odenet.fit``; every rank saves its own
final weights, so the test can check that the replicas stayed identical (DDP averages
the gradients, so every rank applies the same update) and that the loss fell.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import odenet
import solvers

if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import os, sys, torch
    import odenet

    out, view, epochs, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    solver = odenet.solver_config_for(view)
    data = odenet.load_dataset("circles", n_samples=n, seed=0)
    odenet.set_seed(0)
    model = odenet.MLPClassifier(2, 2, hidden=16, **solver)
    rank = int(os.environ["RANK"])
    if rank == 1:  # a different initialisation on rank 1: DDP must broadcast rank 0's weights
        torch.manual_seed(123)
        model = odenet.MLPClassifier(2, 2, hidden=16, **solver)
    res = odenet.fit(model, data, epochs=epochs, batch_size=32, lr=2e-2, seed=0, device="cpu",
                     out=out, quiet=True)
    torch.save({k: v.detach().clone() for k, v in res.model.state_dict().items()},
               os.path.join(out, f"rank{rank}.pt"))
    torch.save([r["train_loss"] for r in res.metrics], os.path.join(out, f"loss{rank}.pt"))
""")


def _torchrun(args, cwd, timeout=180):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("view, epochs, n, drop", [
    ("resnet", 4, 400, 0.8),
    # the implicit and Neural-ODE views: few samples, so they stay in the default run (~10 s each)
    pytest.param("implicit", 2, 128, 0.98, marks=pytest.mark.skipif(
        "implicit_euler" not in solvers.METHODS, reason="solvers has no implicit_euler")),
    pytest.param("node", 2, 128, 0.98, marks=pytest.mark.skipif(
        "adjoint" not in solvers.GRADIENT_MODES, reason="solvers has no adjoint yet")),
])
def test_ddp_replicas_stay_identical_and_loss_falls(tmp_path, view, epochs, n, drop):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    _torchrun([str(script), str(out), view, str(epochs), str(n)], cwd=tmp_path)
    w0 = torch.load(out / "rank0.pt", weights_only=True)
    w1 = torch.load(out / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    losses0 = torch.load(out / "loss0.pt", weights_only=True)
    losses1 = torch.load(out / "loss1.pt", weights_only=True)
    assert losses0 == losses1  # the logged loss is the all-reduced one
    assert losses0[-1] < drop * losses0[0]  # measured ratios: resnet 0.80, implicit and node 0.965
    # rank 0 alone wrote the run's files, and its checkpoint holds the shared weights
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == epochs
    for k in w0:
        assert torch.equal(ckpt["model_state"][k], w0[k])
    # each rank evaluated half of the test set: the logged test metrics are those of the whole
    # set, as one process computes them from the final weights (the sums differ in order only)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert [r["epoch"] for r in metrics] == list(range(1, epochs + 1))
    model = odenet.MLPClassifier(2, 2, hidden=16, **odenet.solver_config_for(view))
    model.load_state_dict(w0)
    data = odenet.load_dataset("circles", n_samples=n, seed=0)
    ev = odenet.evaluate(model, data.x_test, data.y_test)
    assert ev["n"] == len(data.y_test)
    assert metrics[-1]["test_acc"] == pytest.approx(ev["accuracy"], abs=1e-12)
    assert metrics[-1]["test_loss"] == pytest.approx(ev["loss"], rel=1e-5)  # float32 sums in another order
    # ... and the training metrics are all-reduced sums over both halves: equal on every rank (above)


def test_odenet_train_cli_under_torchrun(tmp_path):
    out = tmp_path / "cli"
    proc = _torchrun(["-m", "odenet", "train", "--model", "resnet", "--data", "spirals", "--epochs", "2",
                      "--width", "8", "--device", "cpu", "--out", str(out)], cwd=tmp_path)
    assert proc.stdout.count("done: test accuracy") == 1  # rank 0 only
    assert proc.stdout.count("epoch 2/2") == 1
    rows = json.loads((out / "metrics.json").read_text())["metrics"]
    assert [r["epoch"] for r in rows] == [1, 2]  # fit checked bit-identical replicas after each
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.csv", "metrics.json"]


DIVERGING = textwrap.dedent("""
    import os, sys, torch
    import odenet

    data = odenet.load_dataset("circles", n_samples=200, seed=0)
    odenet.set_seed(0)
    model = odenet.MLPClassifier(2, 2, hidden=8, method="euler", steps=2)
    rank = int(os.environ["RANK"])

    def perturb(row):  # after epoch 1, rank 1 alone changes a weight behind DDP's back
        if rank == 1:
            with torch.no_grad():
                model.head.bias.add_(1.0)

    try:
        odenet.fit(model, data, epochs=3, batch_size=32, seed=0, device="cpu", quiet=True, on_epoch=perturb)
    except odenet.TrainingError as exc:
        print(f"rank {rank}: {exc}")
""")


@pytest.mark.slow
def test_diverged_replicas_are_detected(tmp_path):
    script = tmp_path / "diverge.py"
    script.write_text(DIVERGING)
    proc = _torchrun([str(script)], cwd=tmp_path)
    assert proc.stdout.count("replicas hold different weights after epoch 2") == 2
