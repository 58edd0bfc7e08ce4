"""Attacks and perturbations: FGSM, PGD, transfer from a fixed-step surrogate, the
gradient-free Square attack, Gaussian noise, and :func:`attack_suite` running them all.

- ``_attacks``: FGSM, accuracy against epsilon, Gaussian noise;
- ``_box``: the l-infinity ball intersected with the input range;
- ``_pgd``: PGD and its transfer variant;
- ``_square``: the Square attack;
- ``_nfe``: vector-field evaluations spent by an attack;
- ``_suite``: one model against every attack of the protocol.
"""

from ._attacks import accuracy_vs_epsilon, fgsm, fgsm_accuracy, noise_accuracy
from ._box import check_epsilon, linf_box
from ._nfe import NFECount, count_nfe
from ._pgd import DEFAULT_SURROGATE, pgd, transfer_pgd
from ._square import margin, square_attack
from ._suite import ADVERSARIAL, ATTACKS, AttackSettings, attack_suite

__all__ = ["fgsm", "fgsm_accuracy", "accuracy_vs_epsilon", "noise_accuracy", "linf_box", "check_epsilon",
           "pgd", "transfer_pgd", "DEFAULT_SURROGATE", "square_attack", "margin", "NFECount", "count_nfe",
           "ATTACKS", "ADVERSARIAL", "AttackSettings", "attack_suite"]
