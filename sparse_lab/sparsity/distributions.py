"""Layer-wise density distributions shared by every method that needs per-layer budgets.

uniform: every layer at the global density. ER (Mocanu et al. 2018): density ∝ (n_in + n_out) /
(n_in · n_out). ERK (Evci et al. 2020): density ∝ sum(shape) / prod(shape), i.e. the kernel sizes are
added for convolutions. For ER/ERK the scale ε is solved so that Σ density_l · N_l = D · Σ N_l; any
layer that would exceed density 1 is made dense and removed from the solve, repeated until none does.
"""

from __future__ import annotations

import math

DISTRIBUTIONS = ("uniform", "er", "erk")


def raw_score(shape: tuple[int, ...], distribution: str) -> float:
    if distribution == "er":
        n_out, n_in = shape[0], shape[1]
        return (n_in + n_out) / (n_in * n_out)
    if distribution == "erk":
        return sum(shape) / math.prod(shape)
    raise ValueError(distribution)


def layer_densities(shapes: list[tuple[int, ...]], density: float, distribution: str = "uniform") -> list[float]:
    """Per-layer densities whose parameter-weighted mean is ``density``; shapes are (C_out, C_in, *kernel)."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}")
    if distribution == "uniform" or not shapes:
        return [density] * len(shapes)
    sizes = [math.prod(s) for s in shapes]
    raw = [raw_score(s, distribution) for s in shapes]
    dense: set[int] = set()
    while True:
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        free = [i for i in range(len(shapes)) if i not in dense]
        if not free:
            return [1.0] * len(shapes)
        eps = budget / sum(raw[i] * sizes[i] for i in free)
        overflow = {i for i in free if eps * raw[i] > 1.0}
        if not overflow:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense |= overflow
