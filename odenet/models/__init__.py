"""Models built around :class:`odenet.ODEBlock`: image and MLP classifiers."""

from ._classifiers import MODEL_KINDS, ImageClassifier, MLPClassifier, build_model

__all__ = ["ImageClassifier", "MLPClassifier", "build_model", "MODEL_KINDS"]
