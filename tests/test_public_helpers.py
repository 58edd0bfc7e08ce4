"""Public helpers with no other test: register_gradient_mode, fgsm_accuracy, format_table."""

import math

import pytest
import torch

import odenet
import solvers


def test_register_gradient_mode_is_used_by_solve():
    calls = []

    def runner(prob):  # the direct mode, counting its calls
        calls.append(prob.method.name)
        return prob.run()

    solvers.register_gradient_mode("counting_direct", runner)
    try:
        assert solvers.GRADIENT_MODES["counting_direct"] is runner
        y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        sol = solvers.solve(lambda tt, y: -y, y0, t, method="rk4", options=dict(step_size=0.1), gradient="counting_direct")
        assert calls == ["rk4"]
        (g,) = torch.autograd.grad(sol.ys[-1].sum(), [y0])
        # rk4 with h = 0.1 on y' = -y: (1 - h + h^2/2 - h^3/6 + h^4/24)^10
        h = 0.1
        assert float(g) == pytest.approx((1 - h + h**2 / 2 - h**3 / 6 + h**4 / 24) ** 10, rel=1e-14)
    finally:
        del solvers.GRADIENT_MODES["counting_direct"]
    with pytest.raises(ValueError, match="unknown gradient mode 'counting_direct'"):
        solvers.solve(lambda tt, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), gradient="counting_direct")


@pytest.mark.parametrize("name, runner, exc, match", [
    ("", lambda p: p.run(), ValueError, "non-empty string"),
    (3, lambda p: p.run(), TypeError, "non-empty string"),
    ("mine", "not callable", TypeError, "callable"),
])
def test_register_gradient_mode_rejects_bad_arguments(name, runner, exc, match):
    with pytest.raises(exc, match=match):
        solvers.register_gradient_mode(name, runner)


def test_fgsm_accuracy_is_the_accuracy_on_fgsm_inputs():
    data = odenet.load_dataset("circles", n_samples=300, seed=0)
    odenet.set_seed(0)
    model = odenet.MLPClassifier(2, 2, hidden=8, method="euler", steps=2)
    model = odenet.fit(model, data, epochs=2, batch_size=32, lr=2e-2, quiet=True, device="cpu").model.eval()
    eps = 0.2
    # by hand: one FGSM step of eps raw units (eps / std in the normalised inputs the model sees)
    x_adv = odenet.fgsm(model, data.x_test, data.y_test, eps / data.std, clamp=data.normalised_range())
    with torch.no_grad():
        want = float((model(x_adv).argmax(1) == data.y_test).double().mean())
    got = odenet.fgsm_accuracy(model, data, eps, batch_size=16)  # batches do not change the answer
    assert got == pytest.approx(want, abs=1e-12)
    clean = odenet.evaluate(model, data.x_test, data.y_test)["accuracy"]
    assert odenet.fgsm_accuracy(model, data, 0.0) == clean
    assert got < clean  # the attack hurts (measured 0.40 vs 0.58 clean)


def _report():
    row = dict(solver=dict(method="euler", steps=4, gradient="direct"), test_accuracy=0.8125, train_time_s=1.26,
               nfe_forward_per_batch=4.0, nfe_backward_per_batch=0.0, vjp_backward_per_batch=0.0, peak_memory_mib=1.5,
               fgsm={"0.0": 0.8125, "0.1": 0.5}, cross_solver={"resnet": 0.8125, "node": float("nan")},
               cross_solver_errors={"node": "MaxStepsError: too many steps"})
    return dict(models={"resnet": row}, config=dict(epsilons=[0.0, 0.1], solvers=["resnet", "node"], epochs=1, seed=0),
                data=dict(name="circles", n_train=240, n_test=60), device="cpu", memory_method="torch allocator")


def test_format_table():
    text = odenet.format_table(_report())
    lines = text.splitlines()
    head = lines[1].split()
    assert head[:3] == ["model", "solver", "test"] and lines[0] == lines[2] == lines[4] and set(lines[0]) == {"-"}
    cells = lines[3].split()
    # model, solver, test acc %, train s, NFE fwd, NFE bwd, VJP bwd, peak MiB, FGSM 0, FGSM 0.1, as resnet, as node
    assert cells == ["resnet", "euler/4", "81.2", "1.3", "4.0", "0.0", "0.0", "1.50", "81.2", "50.0", "81.2", "-"]
    assert "data circles (240 train / 60 test), device cpu, 1 epoch(s), seed 0" in text
    assert "failed evaluations ('-'): resnet as node: MaxStepsError: too many steps" in text
    assert math.isnan(_report()["models"]["resnet"]["cross_solver"]["node"])
