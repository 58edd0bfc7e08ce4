"""``odenet compare``'s PGD column: :func:`odenet.jobs._compare.pgd_accuracy` against the
closed-form worst case of a linear classifier, and the option's validation."""

import pytest
import torch
from torch import nn

from odenet.data._classification import DataBundle
from odenet.jobs._compare import CompareConfig, pgd_accuracy


def _linear_case(n=400, d=6, std=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, d, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g) < 0.5).long()
    data = DataBundle("lin", x, y, x, y, num_classes=2, kind="mlp", mean=0.0, std=std, raw_range=None)
    return model, data


def test_pgd_finds_the_linear_worst_case():
    """Two-class linear model: a point survives every l-inf perturbation of size r iff its
    margin exceeds r * |w_y - w_other|_1; the signed gradient is constant, so 10 steps of
    2.5 eps / 10 from any start reach that corner (r = eps / std in model units)."""
    model, data = _linear_case()
    x, y = data.x_test, data.y_test
    with torch.no_grad():
        z = model(x)
    dw = (model.weight[1] - model.weight[0]).abs().sum().item()
    margin = torch.where(y == 1, z[:, 1] - z[:, 0], z[:, 0] - z[:, 1])
    eps = (0.0, 0.05, 0.2, 0.5)
    got = pgd_accuracy(model, data, eps, steps=10, n_points=300)
    assert set(got) == {"0.05", "0.2", "0.5"}  # epsilon 0 is the clean accuracy, not attacked
    for e in eps[1:]:
        want = float((margin[:300] > e / data.std * dw).double().mean())
        assert got[str(e)] == pytest.approx(want, abs=1e-12), e
    assert got["0.05"] > got["0.5"]


def test_pgd_skipped_and_validated(tmp_path):
    model, data = _linear_case(n=20)
    assert pgd_accuracy(model, data, (0.1,), steps=0, n_points=10) == {}
    assert pgd_accuracy(model, data, (0.1,), steps=5, n_points=0) == {}
    for bad in (dict(pgd_steps=-1), dict(pgd_points=2.5), dict(pgd_steps=True)):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            CompareConfig(out=str(tmp_path / "c"), **bad).validate()
