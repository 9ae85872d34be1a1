"""Seed statistics: Student t quantiles, mean ± std with a confidence interval (no scipy needed), and
paired intervals that also count the test set's sampling error."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
    items: int | None = None  # test items whose sampling error the interval also counts (None: seeds only)

    def over(self) -> str:
        return interval_over(self.n, self.items)


def interval_over(seeds: int, items: int | None) -> str:
    """What an interval is taken over, in words."""
    return f"{seeds} seeds" + (f" + {items} test items" if items else "")


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


MAX_DF = 1000  # beyond it t is within 0.1% of the normal; t_cdf_abs's cost grows with df


def summarize_paired(diffs: list[float], item_diffs=None, groups=None, confidence: float = 0.95) -> Summary:
    """Seed-paired differences A − B. With ``item_diffs`` (per test item, A − B averaged over the seeds) the
    interval also counts the test set's sampling error, which seeds share and so cannot show: the variance
    of the mean difference is s²/n (seeds) plus the items' (cluster-robust over ``groups``, items that fail
    together, e.g. renderings of one source; None: every item its own), the degrees of freedom
    Welch-Satterthwaite's (rounded down). Those degrees of freedom grow with the well-estimated item term,
    which can make the combined interval narrower than the seeds' own (t with n - 1 = 2 degrees of freedom
    is 4.30): the wider of the two is returned, so the test set never makes a comparison more certain than
    its seeds."""
    seeds = summarize(diffs, confidence)
    if item_diffs is None or seeds.ci is None or len(item_diffs) < 2:
        return seeds
    item_diffs = np.asarray(item_diffs, dtype=np.float64)
    big_n = len(item_diffs)
    cluster = np.arange(big_n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    clusters = int(cluster.max()) + 1
    if clusters < 2:
        return seeds
    sums = np.bincount(cluster, weights=item_diffs - item_diffs.mean())
    a = seeds.std**2 / seeds.n
    b = float(clusters / (clusters - 1) * (sums**2).sum() / big_n**2)
    if a + b == 0:
        return Summary(seeds.n, seeds.mean, seeds.std, (seeds.mean, seeds.mean), big_n)
    df = (a + b) ** 2 / (a * a / (seeds.n - 1) + b * b / (clusters - 1))
    half = t_quantile(0.5 + confidence / 2.0, max(1, min(MAX_DF, math.floor(df)))) * math.sqrt(a + b)
    half = max(half, seeds.ci[1] - seeds.mean)
    return Summary(seeds.n, seeds.mean, seeds.std, (seeds.mean - half, seeds.mean + half), big_n)
