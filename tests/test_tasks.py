"""The training loop is task-agnostic: a task that is not classification trains, resumes and
writes its own metric through the same fit()."""

import torch
from torch import nn

import odenet
from odenet.training import AbstractTask, ClassificationTask, as_task


class _Regression(AbstractTask):
    """y = A x on 2-D points; metric: mean squared error."""

    metric = "mse"

    def __init__(self, n=96):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 2, generator=g)
        self.y = self.x @ torch.tensor([[1.0, -2.0], [0.5, 3.0]])
        self.x_test, self.y_test = self.x[:32] + 0.1, self.y[:32]

    @property
    def name(self):
        return "linear-map"

    def train_size(self):
        return len(self.x)

    def train_batches(self, indices, batch_size, device):
        for s in range(0, len(indices), batch_size):
            i = indices[s:s + batch_size]
            yield self.x[i].to(device), self.y[i].to(device)

    def loss(self, model, batch):
        x, y = batch
        se = ((model(x) - y) ** 2).mean(dim=1)
        return se.mean(), len(y), float(se.detach().sum())

    def evaluate(self, model, *, batch_size, ctx):
        with torch.no_grad():
            se = ((model(self.x_test) - self.y_test) ** 2).mean(dim=1)
        return {"loss": float(se.mean()), "mse": float(se.mean()), "n": len(se)}


def _model():
    torch.manual_seed(0)
    return nn.Linear(2, 2)


def test_a_regression_task_trains_with_its_own_metric():
    res = odenet.fit(_model(), _Regression(), epochs=40, batch_size=16, lr=5e-2, quiet=True)
    rows = res.metrics
    assert set(rows[0]) >= {"train_loss", "train_mse", "test_loss", "test_mse"}
    assert "train_acc" not in rows[0]
    # a linear model fits a linear map: the error falls by orders of magnitude
    assert rows[-1]["train_mse"] < 1e-3 * rows[0]["train_mse"]


def test_a_custom_task_resumes_to_the_same_weights(tmp_path):
    kw = dict(batch_size=16, lr=5e-2, quiet=True)
    straight = odenet.fit(_model(), _Regression(), epochs=4, out=tmp_path / "a", **kw)
    odenet.fit(_model(), _Regression(), epochs=2, out=tmp_path / "b", **kw)
    resumed = odenet.fit(nn.Linear(2, 2), _Regression(), epochs=4, out=tmp_path / "b", resume=True, **kw)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    untimed = [[{k: v for k, v in r.items() if k != "epoch_time"} for r in res.metrics] for res in (resumed, straight)]
    assert untimed[0] == untimed[1]


def test_a_databundle_becomes_a_classification_task():
    data = odenet.load_dataset("circles", seed=0, limit_train=16, limit_test=8)
    task = as_task(data)
    assert isinstance(task, ClassificationTask) and task.train_size() == 16 and task.metric == "acc"
    assert as_task(task) is task
    try:
        as_task([1, 2])
    except TypeError as exc:
        assert "DataBundle" in str(exc) and "AbstractTask" in str(exc)
    else:
        raise AssertionError("as_task accepted a list")


def _tiny_bundle():
    return odenet.load_dataset("circles", seed=0, limit_train=64, limit_test=32)


def test_label_smoothing_loss_is_the_smoothed_cross_entropy():
    data = _tiny_bundle()
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    xb, yb = data.x_train[:16], data.y_train[:16]
    for eps in (0.0, 0.1, 0.3):
        loss, n, correct = ClassificationTask(data, label_smoothing=eps).loss(model, (xb, yb))
        logp = torch.log_softmax(model(xb), dim=1)
        # (1 - eps) * NLL of the label + eps * mean over classes of -log p (closed form)
        want = ((1 - eps) * -logp.gather(1, yb[:, None]).squeeze(1) + eps * -logp.mean(1)).mean()
        torch.testing.assert_close(loss, want, rtol=1e-6, atol=0)
        assert n == 16


def test_label_smoothing_is_validated_and_kept_in_the_run_config():
    data = _tiny_bundle()
    for bad in (-0.1, 1.0, 2, True, "0.1"):
        try:
            ClassificationTask(data, label_smoothing=bad)
        except ValueError as exc:
            assert "label_smoothing" in str(exc)
        else:
            raise AssertionError(f"label_smoothing={bad!r} was accepted")
    assert "label_smoothing" not in ClassificationTask(data).run_config()  # old checkpoints still resume
    assert ClassificationTask(data, label_smoothing=0.1).run_config()["label_smoothing"] == 0.1


def test_resume_with_other_label_smoothing_is_refused(tmp_path):
    odenet.train(model="resnet", data="circles", epochs=1, limit_train=64, limit_test=32, width=8,
                 label_smoothing=0.1, out=str(tmp_path), quiet=True)
    try:
        odenet.train(model="resnet", data="circles", epochs=2, limit_train=64, limit_test=32, width=8,
                     label_smoothing=0.2, out=str(tmp_path), resume=True, quiet=True)
    except Exception as exc:  # the run-config mismatch names the setting
        assert "label_smoothing" in str(exc)
    else:
        raise AssertionError("a resume with another label_smoothing was accepted")
