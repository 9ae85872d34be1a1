"""Seed statistics: Student t quantiles, mean ± std with a confidence interval (no scipy needed)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def t_cdf_abs(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (exact: Abramowitz & Stegun 26.7.3-4)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    t = abs(t)
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, 0.0
        if df > 1:
            term = c
            total = c
            for k in range(3, df - 1, 2):  # coefficients 2/3, 2*4/(3*5), ...
                term *= (k - 1) / k * c * c
                total += term
        return 2.0 / math.pi * (theta + s * total)
    total, term = 1.0, 1.0
    for k in range(2, df - 1, 2):  # coefficients 1/2, 1*3/(2*4), ...
        term *= (k - 1) / k * c * c
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with integer ``df``, by bisection on the exact CDF."""
    if not 0.5 < p < 1.0:
        raise ValueError("p must be in (0.5, 1)")
    target = 2.0 * p - 1.0  # P(|T| < q)
    lo, hi = 0.0, 1.0
    while t_cdf_abs(hi, df) < target:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf_abs(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


@dataclass
class Summary:
    n: int
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None


def summarize(values: list[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std (ddof 1) and the Student-t confidence interval of the mean (None below two values)."""
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None)
    mean = sum(values) / n
    if n < 2:
        return Summary(n, mean, None, None)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, (mean - half, mean + half))
