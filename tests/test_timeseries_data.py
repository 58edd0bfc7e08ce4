"""Irregular series data: interpolation, padding, dropping observations, loaders, bad input."""

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline

from odenet.data import (SeriesBatch, check_series, drop_observations, hermite_cubic_backward, load_uea,
                         natural_cubic_spline, pad_series, periodic_sines, spiral_series, uea_datasets)


def _ragged(seed=0, lengths=(7, 4, 10)):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.rand(n, generator=g, dtype=torch.float64).mul(5).sort().values + torch.arange(n) * 1e-3 for n in lengths]
    xs = [torch.randn(n, 3, generator=g, dtype=torch.float64) for n in lengths]
    return ts, xs


def _batch64(ts, xs):
    b = pad_series(ts, [x.float() for x in xs])
    x = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True)  # (B, T, C) float64
    return b, x


def test_natural_spline_matches_scipy():
    ts, xs = _ragged()
    b, x = _batch64(ts, xs)
    path = natural_cubic_spline(b.times, x, b.lengths)
    for i, (t, v) in enumerate(zip(ts, xs)):
        cs = CubicSpline(t.numpy(), v.numpy(), bc_type="natural")
        q = torch.linspace(float(t[0]), float(t[-1]), 57, dtype=torch.float64)
        qb = q[None].expand(len(ts), -1).clone()
        got = path.evaluate(qb)[i]
        np.testing.assert_allclose(got.numpy(), cs(q.numpy()), rtol=0, atol=1e-10)
        np.testing.assert_allclose(path.derivative(qb)[i].numpy(), cs(q.numpy(), 1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("interp", [natural_cubic_spline, hermite_cubic_backward])
def test_interpolants_pass_through_knots_and_reproduce_linear_data(interp):
    ts, xs = _ragged(1)
    b, x = _batch64(ts, xs)
    path = interp(b.times, x, b.lengths)
    for i, t in enumerate(ts):
        n = len(t)
        np.testing.assert_allclose(path.evaluate(b.times)[i, :n].numpy(), xs[i].numpy(), atol=1e-12)
    lin = 2.0 * b.times[..., None] - 1.0 + torch.zeros(1, 1, 3, dtype=torch.float64)
    path = interp(b.times, lin, b.lengths)
    q = b.times[:, :1] + torch.rand(len(ts), 40, dtype=torch.float64) * (b.times.max(1, keepdim=True).values - b.times[:, :1])
    q = torch.minimum(q, b.times.gather(1, (b.lengths - 1)[:, None]))
    np.testing.assert_allclose(path.evaluate(q).numpy(), (2 * q[..., None] - 1).expand(-1, -1, 3).numpy(), atol=1e-11)
    np.testing.assert_allclose(path.derivative(q).numpy(), 2.0, atol=1e-10)


def test_hermite_is_c1_and_causal():
    ts, xs = _ragged(2, lengths=(9,))
    b, x = _batch64(ts, xs)
    path = hermite_cubic_backward(b.times, x)
    h = b.times[:, 1:] - b.times[:, :-1]
    for k in range(1, 8):  # the derivative at knot k from the left and from the right interval
        left = path.derivative_on(k - 1, h[:, k - 1])
        right = path.derivative_on(k, torch.zeros(1, dtype=torch.float64))
        np.testing.assert_allclose(left.numpy(), right.numpy(), rtol=1e-9, atol=1e-9)
    # changing the last observation leaves every interval but the last one unchanged
    x2 = x.clone()
    x2[:, -1] += 1.0
    p2 = hermite_cubic_backward(b.times, x2)
    q = b.times[:, :1] + (b.times[:, -2:-1] - b.times[:, :1]) * torch.linspace(0, 1, 30, dtype=torch.float64)[None]
    np.testing.assert_allclose(path.evaluate(q).numpy(), p2.evaluate(q).numpy(), atol=1e-12)


def test_spline_padding_changes_nothing():
    ts, xs = _ragged(3)
    b, x = _batch64(ts, xs)
    p_all = natural_cubic_spline(b.times, x, b.lengths)
    alone = natural_cubic_spline(ts[1][None], xs[1][None])
    q = torch.linspace(float(ts[1][0]), float(ts[1][-1]), 20, dtype=torch.float64)[None]
    np.testing.assert_allclose(p_all.evaluate(q.expand(3, -1))[1].numpy(), alone.evaluate(q)[0].numpy(), atol=1e-12)


def test_pad_series_pads_with_last_time_and_zero_mask():
    ts, xs = _ragged()
    b = pad_series(ts, [x.float() for x in xs])
    assert b.values.shape == (3, 10, 3) and b.lengths.tolist() == [7, 4, 10]
    assert torch.all(b.times[1, 4:] == ts[1][-1]) and float(b.mask[1, 4:].sum()) == 0


def test_drop_observations_per_sample_seeded():
    ts, xs = _ragged(lengths=(10, 10, 20))
    b = pad_series(ts, [x.float() for x in xs])
    d1, d2 = drop_observations(b, 0.3, seed=5), drop_observations(b, 0.3, seed=5)
    assert d1.lengths.tolist() == [7, 7, 14]
    assert torch.equal(d1.times, d2.times)
    for i in range(3):  # kept points are a subset of the originals, in time order
        n = int(d1.lengths[i])
        kept = d1.times[i, :n]
        assert torch.all(kept[1:] > kept[:-1])
        assert all(bool((ts[i] == v).any()) for v in kept)
    assert not torch.equal(d1.times[0, :7] - ts[0][0], d1.times[1, :7] - ts[1][0])
    with pytest.raises(ValueError, match="drop rate"):
        drop_observations(b, 1.0)


def test_bad_input_errors():
    v = torch.zeros(2, 3, 1)
    m = torch.ones(2, 3, 1)
    t = torch.tensor([[0.0, 1.0, 2.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="decrease"):
        check_series(v, t, m)
    t_nan = torch.tensor([[0.0, float("nan"), 2.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN times"):
        check_series(v, t_nan, m)
    m0 = m.clone()
    m0[1] = 0
    with pytest.raises(ValueError, match="no observations"):
        SeriesBatch(v, t.sort(1).values, m0, torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="channel"):
        check_series(v, t.sort(1).values, m, channels=4)
    with pytest.raises(ValueError, match="no observations"):
        pad_series([torch.zeros(0)], [torch.zeros(0, 1)])


def test_uea_loader_japanese_vowels_and_close_matches():
    assert "JapaneseVowels" in uea_datasets()
    d = load_uea("JapaneseVowels")
    assert (len(d.train), len(d.test), d.channels, d.num_classes) == (270, 370, 12, 9)
    lengths = torch.cat([d.train.lengths, d.test.lengths])
    assert int(lengths.min()) == 7 and int(lengths.max()) == 29
    with pytest.raises(ValueError, match="JapaneseVowels"):
        load_uea("japanesevowel")


def test_uea_time_scale_multiplies_the_sample_index():
    base, scaled = load_uea("JapaneseVowels"), load_uea("JapaneseVowels", time_scale=0.1)
    for a, b in ((base.train, scaled.train), (base.test, scaled.test)):
        assert torch.equal(a.values, b.values) and torch.equal(a.mask, b.mask) and torch.equal(a.lengths, b.lengths)
        n = int(a.lengths[0])
        assert torch.equal(a.times[0, :n], torch.arange(n, dtype=torch.float64))
        torch.testing.assert_close(b.times, a.times * 0.1, rtol=0, atol=1e-15)
    assert scaled.info["time_scale"] == 0.1 and "x 0.1" in scaled.description
    for bad in (0, -1.0, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="time_scale"):
            load_uea("JapaneseVowels", time_scale=bad)


def test_synthetic_sets_deterministic():
    a, b = periodic_sines(50, seed=3), periodic_sines(50, seed=3)
    assert torch.equal(a.train.values, b.train.values) and torch.equal(a.target_test.times, b.target_test.times)
    assert float(a.target_train.times.min()) >= 2.5 - 1e-9 and float(a.train.times.max()) < 2.5
    i = periodic_sines(50, task="interpolation")
    assert int(i.target_train.lengths.max()) == 100
    s = spiral_series(40)
    assert s.num_classes == 2 and s.channels == 2
