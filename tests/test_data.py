"""Tests of odenet.data._classification: shapes, determinism, splits, normalisation, bad input."""

import numpy as np
import pytest
import torch

from odenet.data._classification import DATASETS, iterate_batches, load_dataset


def test_digits_shapes_and_split():
    d = load_dataset("digits")
    assert d.kind == "image" and d.num_classes == 10
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_test.shape[1:] == (1, 8, 8)
    assert len(d.y_train) + len(d.y_test) == 1797  # the whole bundled set, nothing lost
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_test.tolist()) == set(range(10))
    # stratified: each class holds round(0.2 * n_c) test samples
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)
    assert np.bincount(d.y_test.numpy(), minlength=10).tolist() == \
        [int(round(0.2 * c)) for c in counts]
    assert d.model_kwargs() == dict(in_channels=1, image_size=8, num_classes=10)


def test_digits_normalisation_uses_train_statistics_and_maps_back_to_pixels():
    from sklearn.datasets import load_digits

    d = load_dataset("digits")
    assert abs(float(d.x_train.mean())) < 1e-5
    assert abs(float(d.x_train.std(unbiased=False)) - 1.0) < 1e-4
    raw = d.x_train * d.std + d.mean  # back to pixels in [0, 1]
    assert float(raw.min()) > -1e-5 and float(raw.max()) < 1 + 1e-5
    # every training image is one of sklearn's images, exactly (pixels are k/16)
    imgs = {tuple(np.round(im.ravel()).astype(int)) for im in load_digits().images}  # 0..16
    sample = np.round(raw[:50].numpy().reshape(50, -1) * 16).astype(int)
    assert all(tuple(r) in imgs for r in sample)
    lo, hi = d.normalised_range()
    assert lo == pytest.approx(-d.mean / d.std) and hi == pytest.approx((1 - d.mean) / d.std)


@pytest.mark.parametrize("name", DATASETS)
def test_deterministic_and_seed_dependent(name):
    a = load_dataset(name, seed=3)
    b = load_dataset(name, seed=3)
    c = load_dataset(name, seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)


@pytest.mark.parametrize("name", ["circles", "spirals"])
def test_2d_sets(name):
    d = load_dataset(name, n_samples=400)
    assert d.kind == "mlp" and d.num_classes == 2 and d.raw_range is None
    assert d.x_train.shape == (320, 2) and d.x_test.shape == (80, 2)
    assert d.model_kwargs() == dict(in_features=2, num_classes=2)
    assert np.bincount(d.y_train.numpy()).tolist() == [160, 160]


def test_circles_geometry():
    d = load_dataset("circles", n_samples=2000, noise=0.0)
    x = torch.cat([d.x_train, d.x_test]) * d.std + d.mean
    y = torch.cat([d.y_train, d.y_test])
    r = x.norm(dim=1)
    assert torch.allclose(r[y == 0], torch.ones(()), atol=1e-5)
    assert torch.allclose(r[y == 1], torch.full((), 0.5), atol=1e-5)


def test_spirals_geometry():
    d = load_dataset("spirals", n_samples=1000, noise=0.0)
    x = (torch.cat([d.x_train, d.x_test]) * d.std + d.mean).double()
    y = torch.cat([d.y_train, d.y_test])
    r = x.norm(dim=1)
    theta = torch.atan2(x[:, 1], x[:, 0])
    # arm k: angle = 3*pi*r + k*pi (mod 2*pi)
    resid = torch.remainder(theta - 3 * torch.pi * r - y * torch.pi + torch.pi, 2 * torch.pi) - torch.pi
    assert float(resid.abs().max()) < 1e-4


def test_limits():
    d = load_dataset("digits", limit_train=100, limit_test=30)
    assert len(d.y_train) == 100 and len(d.y_test) == 30
    full = load_dataset("digits")
    assert len(set(d.y_train.tolist())) == 10  # a prefix is still class-mixed
    assert torch.equal(d.y_train, full.y_train[:100])


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="mnist"), "unknown dataset 'mnist'"),
    (dict(name="digits", test_fraction=1.5), "test_fraction"),
    (dict(name="digits", limit_train=0), "limit_train"),
    (dict(name="circles", n_samples=3), "n_samples"),
    (dict(name="circles", noise=-1.0), "noise"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_iterate_batches():
    x = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    got = [yb.tolist() for _, yb in iterate_batches(x, y, 4)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    idx = torch.tensor([9, 0, 5])
    got = [(xb[:, 0].tolist(), yb.tolist()) for xb, yb in iterate_batches(x, y, 2, indices=idx)]
    assert got == [([9.0, 0.0], [9, 0]), ([5.0], [5])]
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(x, y, 0))
