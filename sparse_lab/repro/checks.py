"""What a claim compares and how it is judged: per-seed quantities, paired differences, verdicts.

A claim names its variants (groups of runs that differ only in seed) by config values, and states
checks between them. Every check pairs two per-seed quantities by seed and judges the Student-t 95%
confidence interval of their difference (or ratio): a claim is only *held* where the interval excludes
the other outcome, *not held* where it excludes the claimed one, and *not distinguishable* otherwise. Where
the runs recorded their test items (``sparse_lab.test_items``), a difference's interval also counts the
test set's sampling error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparse_lab.report.runs import Group, Items, paired_summary
from sparse_lab.report.stats import Summary, summarize
from sparse_lab.results import flatten_config

HELD, NOT_HELD, UNCLEAR = "held", "not held", "not distinguishable"
CONFOUNDED = "confounded"  # a premise of the comparison failed: the claim's own checks cannot be read


@dataclass(frozen=True)
class Metric:
    """A results.json metric; ``complement`` reads 1 - value (e.g. nonzero = 1 - zero fraction)."""

    key: str
    label: str
    higher_is_better: bool = True
    complement: bool = False
    scale: float = 1.0  # shown ×scale (100 for accuracies in points)

    def of(self, metrics: dict) -> float | None:
        value = metrics.get(self.key)
        if value is None:
            return None
        value = float(value)
        return 1.0 - value if self.complement else value


ACCURACY = Metric("test/acc", "test accuracy (points)", scale=100.0)
EPE3D = Metric("test/epe3d", "test EPE3D (m)", higher_is_better=False)


@dataclass(frozen=True)
class Variant:
    """One arm of a claim: the runs whose flattened config has every ``where`` value."""

    label: str
    where: dict[str, Any]

    def matches(self, config: dict) -> bool:
        flat = flatten_config(config)
        return all(_same(flat.get(key), value) for key, value in self.where.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-12
    return a == b


@dataclass(frozen=True)
class Gap:
    """The per-seed difference ``a - b`` of one metric between two variants (for differences of gaps)."""

    a: str
    b: str

    def label(self) -> str:
        return f"({self.a} − {self.b})"


Term = str | Gap  # a variant's label, or a gap between two variants


@dataclass(frozen=True)
class Check:
    """``a`` is claimed better than ``b`` on ``metric`` (kind "better"), no worse than ``b`` by more than
    ``margin`` (kind "noninferior"), or smaller than ``b`` by at least a factor ``factor`` (kind "ratio":
    b / a >= factor, e.g. energy or nonzero counts). ``lower_gap``: for Gap terms, a smaller value is the
    claimed outcome (the gap shrinks)."""

    kind: str
    a: Term
    b: Term
    metric: Metric = ACCURACY
    margin: float = 0.0  # noninferior: in the metric's own units (0.03 = 3 points of accuracy)
    factor: float = 1.0  # ratio
    lower_gap: bool = False
    says: str = ""
    premise: bool = False  # not the claim itself but what reading it assumes (e.g. the wider dense model trains)
    aside: bool = False  # another setting than the claim's own (e.g. another λ): shown, not in the verdict

    def label(self) -> str:
        a = self.a.label() if isinstance(self.a, Gap) else self.a
        b = self.b.label() if isinstance(self.b, Gap) else self.b
        if self.kind == "ratio":
            return f"{self.metric.label}: {b} / {a} ≥ {self.factor:g}"
        if self.kind == "noninferior":
            return f"{self.metric.label}: {a} − {b} > −{self.margin * self.metric.scale:g}"
        return f"{self.metric.label}: {a} {'<' if self._lower_better() else '>'} {b}"

    def _lower_better(self) -> bool:
        if isinstance(self.a, Gap):
            return self.lower_gap
        return not self.metric.higher_is_better


@dataclass
class Outcome:
    check: Check
    seeds: list
    values: list[float]  # per seed: a - b (better, noninferior) or b / a (ratio)
    summary: Summary
    verdict: str
    note: str = ""


@dataclass
class ClaimResult:
    variants: dict[str, Group]
    outcomes: list[Outcome]
    missing: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.missing or not self.outcomes:
            return UNCLEAR
        if any(o.check.premise and o.verdict == NOT_HELD for o in self.outcomes):
            return CONFOUNDED
        verdicts = [o.verdict for o in self.outcomes if not (o.check.premise or o.check.aside)]
        if NOT_HELD in verdicts:
            return NOT_HELD
        return HELD if all(v == HELD for v in verdicts) else UNCLEAR


def select_variants(groups: list[Group], variants: list[Variant]) -> tuple[dict[str, Group], list[str]]:
    """Each variant's group (the one whose config matches; ambiguity is an error in the claim's definition)."""
    found: dict[str, Group] = {}
    missing: list[str] = []
    for variant in variants:
        matching = [g for g in groups if variant.matches(g.first.config)]
        if len(matching) > 1:
            labels = ", ".join(g.label for g in matching)
            raise ValueError(f"variant {variant.label!r} matches {len(matching)} groups ({labels}): narrow its `where`")
        if matching:
            found[variant.label] = matching[0]
        else:
            missing.append(variant.label)
    return found, missing


def per_seed(term: Term, groups: dict[str, Group], metric: Metric) -> dict[Any, float]:
    if isinstance(term, Gap):
        a, b = per_seed(term.a, groups, metric), per_seed(term.b, groups, metric)
        return {s: a[s] - b[s] for s in a if s in b}
    values: dict[Any, float] = {}
    for run in groups[term].runs:
        value = metric.of(run.metrics)
        if value is not None:
            values[run.seed] = value
    return values


def per_seed_items(term: Term, groups: dict[str, Group], metric: Metric) -> dict[Any, Items | None]:
    """A term's per-item test values by seed (a gap's: item by item), where its runs recorded them."""
    if metric.complement:  # items hold the metric itself
        return {}
    if isinstance(term, Gap):
        a, b = per_seed_items(term.a, groups, metric), per_seed_items(term.b, groups, metric)
        return {s: a[s] - b[s] for s in a if s in b}
    return groups[term].items_by_seed(metric.key)


def evaluate(check: Check, groups: dict[str, Group]) -> Outcome:
    a, b = per_seed(check.a, groups, check.metric), per_seed(check.b, groups, check.metric)
    seeds = sorted(set(a) & set(b), key=str)
    if check.kind == "ratio":
        values = [b[s] / a[s] if a[s] else float("inf") for s in seeds]
        summary = summarize(values)
    else:
        values = [a[s] - b[s] for s in seeds]
        items_a, items_b = (per_seed_items(t, groups, check.metric) for t in (check.a, check.b))
        summary = paired_summary(values, items_a, items_b, seeds)
    return Outcome(check, seeds, values, summary, judge(check, summary))


def judge(check: Check, summary: Summary) -> str:
    if summary.ci is None:
        return UNCLEAR
    lo, hi = summary.ci
    if check.kind == "ratio":
        return HELD if lo >= check.factor else NOT_HELD if hi < check.factor else UNCLEAR
    sign = -1.0 if check._lower_better() else 1.0  # the claimed direction as "positive"
    lo, hi = sorted((sign * lo, sign * hi))
    if check.kind == "noninferior":
        return HELD if lo > -check.margin else NOT_HELD if hi < -check.margin else UNCLEAR
    return HELD if lo > 0 else NOT_HELD if hi < 0 else UNCLEAR


def judge_claim(groups: list[Group], variants: list[Variant], checks: list[Check]) -> ClaimResult:
    found, missing = select_variants(groups, variants)
    outcomes = []
    for check in checks:
        needed = {t for term in (check.a, check.b) for t in ((term.a, term.b) if isinstance(term, Gap) else (term,))}
        if needed <= set(found):
            outcomes.append(evaluate(check, found))
    return ClaimResult(found, outcomes, missing)
