"""Attacks and perturbations: FGSM, accuracy against epsilon, Gaussian noise."""

from ._attacks import accuracy_vs_epsilon, fgsm, fgsm_accuracy, noise_accuracy

__all__ = ["fgsm", "fgsm_accuracy", "accuracy_vs_epsilon", "noise_accuracy"]
