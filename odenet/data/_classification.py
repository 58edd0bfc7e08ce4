"""Small built-in datasets: scikit-learn's digits, and synthetic 2-D circles and spirals.

Nothing is downloaded: the digits (1797 8x8 grey images of the ten digits) ship
with scikit-learn, and the 2-D sets are generated from a seeded random generator.
Every loader returns a :class:`DataBundle` of float32/int64 tensors with a
deterministic, stratified train/test split, normalised with statistics of the
training split only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

__all__ = ["DATASETS", "DataBundle", "load_dataset", "iterate_batches"]

#: Names accepted by :func:`load_dataset`.
DATASETS = ("digits", "circles", "spirals")


@dataclass
class DataBundle:
    """A normalised classification dataset split into train and test tensors.

    Attributes
    ----------
    name : str
        Dataset name (one of :data:`DATASETS`).
    x_train, x_test : torch.Tensor
        Inputs, float32. Images are ``[N, C, H, W]``; 2-D points are ``[N, 2]``.
    y_train, y_test : torch.Tensor
        Integer class labels, int64, ``[N]``.
    num_classes : int
        Number of classes.
    kind : str
        ``"image"`` (use :class:`odenet.ImageClassifier`) or ``"mlp"`` (use
        :class:`odenet.MLPClassifier`).
    mean, std : float
        The affine normalisation applied: ``x_normalised = (x_raw - mean) / std``
        (a scalar over all features, so one epsilon means the same perturbation
        for every pixel).
    raw_range : tuple of float or None
        Valid range of the raw inputs (``(0, 1)`` for digit pixels), used to clamp
        adversarial examples; ``None`` for unbounded data.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    kind: str
    mean: float
    std: float
    raw_range: tuple[float, float] | None = None
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])

    def model_kwargs(self) -> dict:
        """Keyword arguments describing the data for :func:`odenet.build_model`.

        Returns ``in_channels``, ``image_size`` and ``num_classes`` for images, and
        ``in_features`` and ``num_classes`` for 2-D data.
        """
        if self.kind == "image":
            return dict(in_channels=int(self.x_train.shape[1]),
                        image_size=int(self.x_train.shape[-1]),
                        num_classes=self.num_classes)
        return dict(in_features=int(self.x_train.shape[1]), num_classes=self.num_classes)

    def normalised_range(self) -> tuple[float, float] | None:
        """The valid input range after normalisation, or ``None`` if unbounded."""
        if self.raw_range is None:
            return None
        lo, hi = self.raw_range
        return ((lo - self.mean) / self.std, (hi - self.mean) / self.std)

    def summary(self) -> str:
        """One line describing the bundle."""
        return (f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test samples, "
                f"input {list(self.input_shape)}, {self.num_classes} classes")


def _stratified_split(y: np.ndarray, test_fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified split: each class contributes ``round(n_c * test_fraction)``."""
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train = np.concatenate(train_idx)
    test = np.concatenate(test_idx)
    # Mix classes so that a plain prefix (limit_train) is still roughly balanced.
    return train[rng.permutation(len(train))], test[rng.permutation(len(test))]


def _digits() -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.images.astype(np.float32)[:, None, :, :] / 16.0  # [N, 1, 8, 8], pixels in [0, 1]
    return x, data.target.astype(np.int64), (0.0, 1.0)


def _circles(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two concentric noisy circles, radii 1 (class 0) and 0.5 (class 1)."""
    n_outer = n // 2
    n_inner = n - n_outer
    theta = rng.uniform(0.0, 2.0 * math.pi, size=n)
    radius = np.concatenate([np.full(n_outer, 1.0), np.full(n_inner, 0.5)])
    x = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    x = x + noise * rng.standard_normal(x.shape)
    y = np.concatenate([np.zeros(n_outer), np.ones(n_inner)]).astype(np.int64)
    return x.astype(np.float32), y


def _spirals(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved Archimedean spirals (1.5 turns each), the second rotated by pi."""
    n0 = n // 2
    n1 = n - n0
    xs, ys = [], []
    for label, count in ((0, n0), (1, n1)):
        s = np.sqrt(rng.uniform(0.0, 1.0, size=count))  # uniform density along the arm
        angle = 3.0 * math.pi * s + label * math.pi
        r = s
        pts = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
        xs.append(pts + noise * rng.standard_normal(pts.shape))
        ys.append(np.full(count, label, dtype=np.int64))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def load_dataset(name: str = "digits", *, seed: int = 0, test_fraction: float = 0.2,
                 n_samples: int = 1000, noise: float | None = None,
                 limit_train: int | None = None, limit_test: int | None = None) -> DataBundle:
    """Load one of the built-in datasets as normalised tensors.

    Parameters
    ----------
    name : {"digits", "circles", "spirals"}
        Which dataset. ``digits`` are scikit-learn's bundled 8x8 images (1797 of
        them, no download); ``circles`` and ``spirals`` are generated 2-D sets.
    seed : int
        Seed of the split (and of the generated points); the same seed always
        gives the same tensors.
    test_fraction : float
        Fraction of each class held out for testing, in (0, 1).
    n_samples : int
        Number of points generated for the 2-D sets (ignored for digits).
    noise : float, optional
        Standard deviation of the Gaussian noise added to the 2-D points
        (default 0.08 for circles, 0.05 for spirals).
    limit_train, limit_test : int, optional
        Keep only the first this many samples of each split (for quick runs).

    Returns
    -------
    DataBundle

    Raises
    ------
    ValueError
        For an unknown name or out-of-range sizes/fractions.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    for arg, val in (("limit_train", limit_train), ("limit_test", limit_test)):
        if val is not None and (not isinstance(val, int) or val < 1):
            raise ValueError(f"{arg} must be a positive integer or None, got {val!r}")
    if not isinstance(n_samples, int) or n_samples < 20:
        raise ValueError(f"n_samples must be an integer >= 20, got {n_samples!r}")
    if noise is not None and noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")

    rng = np.random.default_rng(seed)
    raw_range: tuple[float, float] | None
    if name == "digits":
        x, y, raw_range = _digits()
        kind = "image"
    elif name == "circles":
        x, y = _circles(n_samples, 0.08 if noise is None else noise, rng)
        raw_range, kind = None, "mlp"
    else:
        x, y = _spirals(n_samples, 0.05 if noise is None else noise, rng)
        raw_range, kind = None, "mlp"

    train_idx, test_idx = _stratified_split(y, float(test_fraction), rng)
    if limit_train is not None:
        train_idx = train_idx[:limit_train]
    if limit_test is not None:
        test_idx = test_idx[:limit_test]
    x_train, x_test = x[train_idx], x[test_idx]
    mean = float(x_train.mean(dtype=np.float64))
    std = float(x_train.std(dtype=np.float64))
    if not std > 0:
        std = 1.0

    def _t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32))

    return DataBundle(
        name=name,
        x_train=_t(x_train), y_train=torch.from_numpy(y[train_idx].copy()),
        x_test=_t(x_test), y_test=torch.from_numpy(y[test_idx].copy()),
        num_classes=int(y.max()) + 1, kind=kind, mean=mean, std=std, raw_range=raw_range,
        info=dict(seed=seed, test_fraction=float(test_fraction), n_samples=n_samples,
                  noise=noise, limit_train=limit_train, limit_test=limit_test),
    )


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *,
                    indices: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x[idx], y[idx])`` mini-batches in order (or in the order of ``indices``).

    Indexing whole tensors avoids the per-sample collation of a
    :class:`torch.utils.data.DataLoader`, which dominates the cost for datasets
    this small.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(y) if indices is None else len(indices)
    for start in range(0, n, batch_size):
        if indices is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = indices[start:start + batch_size]
            yield x[idx], y[idx]
