"""Bundled and synthetic data sets (no downloads): digits, circles, spirals; irregular time
series (the UEA/UCR archive bundled in sktime's wheel, periodic sines, spiral series) with
masks, padding and dropped observations; cubic interpolation of irregular series."""

from ._classification import DATASETS, DataBundle, iterate_batches, load_dataset
from ._interpolation import INTERPOLATIONS, CubicPath, hermite_cubic_backward, natural_cubic_spline
from ._irregular import SeriesBatch, SeriesData, check_series, collate_series, drop_observations, pad_series
from ._synthetic_series import periodic_sines, spiral_series
from ._uea import load_uea, uea_datasets

__all__ = ["load_dataset", "DataBundle", "DATASETS", "iterate_batches",
           "SeriesBatch", "SeriesData", "pad_series", "collate_series", "drop_observations", "check_series",
           "CubicPath", "natural_cubic_spline", "hermite_cubic_backward", "INTERPOLATIONS",
           "periodic_sines", "spiral_series", "load_uea", "uea_datasets"]
