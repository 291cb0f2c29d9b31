"""Attacks: our PGD (L-inf, L2) for training and evaluation; AutoAttack through ``pyautoattack``."""

from robustscale.attacks.pgd import (
    ce_sum,
    frozen_bn_stats,
    kl_sum,
    pgd,
    pgd_accuracy,
    pgd_worst_case,
)

__all__ = ["pgd", "pgd_worst_case", "pgd_accuracy", "frozen_bn_stats", "ce_sum", "kl_sum"]
