"""Bundled and synthetic data sets (no downloads): digits, circles, spirals."""

from ._classification import DATASETS, DataBundle, iterate_batches, load_dataset

__all__ = ["load_dataset", "DataBundle", "DATASETS", "iterate_batches"]
