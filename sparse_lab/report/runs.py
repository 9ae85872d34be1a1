"""Runs and groups: results.json files read, grouped by everything but the seed, and paired comparisons."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sparse_lab import test_items
from sparse_lab.registry import component_name
from sparse_lab.report.stats import Summary, summarize, summarize_paired
from sparse_lab.results import flatten_config, process_alive

# primary metric -> higher is better
PRIMARY_METRICS: dict[str, bool] = {"test/acc": True, "test/epe3d": False}
# config keys that say nothing about what was run (removed before grouping)
RUN_SPECIFIC_KEYS = ("seed", "paths", "hydra")
CSV_METRICS = (
    "val/acc",
    "val/epe3d",
    "sparsity/global",
    "macs/dense",
    "macs/target",
    "params/total",
    "params/nonzero",
    "energy/uJ",
    "latency/deployed_ms",
    "speedup/realised",
)
SPARSITY_TOLERANCE = 0.01


class Items(NamedTuple):
    """A run's test, item by item: which items (``fingerprint``), the metric's value on each, and which
    fail together (``groups``)."""

    fingerprint: str
    values: np.ndarray
    groups: np.ndarray

    def __sub__(self, other: Items) -> Items | None:
        """Item by item, when both hold the same items."""
        same = self.fingerprint == other.fingerprint and len(self.values) == len(other.values)
        return Items(self.fingerprint, self.values - other.values, self.groups) if same else None


def paired_summary(diffs: list[float], a: dict[Any, Items | None], b: dict[Any, Items | None], seeds: list) -> Summary:
    """The seed-paired differences' summary; where both sides have every seed's items (the same items), its
    interval also counts the test set's sampling error (per item, A − B averaged over ``seeds``)."""
    items = [a[s] - b[s] if a.get(s) is not None and b.get(s) is not None else None for s in seeds]
    if not items or any(d is None for d in items) or len({d.fingerprint for d in items}) != 1:
        return summarize(diffs)
    return summarize_paired(diffs, np.mean([d.values for d in items], axis=0), items[0].groups)


@dataclass
class Run:
    path: Path
    status: str
    error: str | None
    config: dict
    metrics: dict
    key: str = ""
    layers: list[dict] = field(default_factory=list)  # results.json "layers": the final per-layer densities
    wandb: dict | None = None  # results.json "wandb": where the run logged (project, group, id, ...)
    command: str | None = None  # results.json "command": the command line that started it (a sweep's, for a job)
    test_items: dict | None = None  # results.json "test_items": the per-item file's record (sparse_lab.test_items)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def name(self, group: str) -> str:
        options = self.config.get(group)
        return component_name(options) if isinstance(options, dict) else "-"

    @property
    def primary(self) -> str | None:
        return next((m for m in PRIMARY_METRICS if self.metrics.get(m) is not None), None)

    @property
    def value(self) -> float | None:
        metric = self.primary
        return float(self.metrics[metric]) if metric else None

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def items(self, metric: str) -> Items | None:
        """This run's per-item test values of ``metric`` (None where it recorded none)."""
        loaded = test_items.load(self.path, self.test_items, metric)
        return None if loaded is None else Items(self.test_items["fingerprint"], *loaded)


@dataclass
class Group:
    key: str
    runs: list[Run]
    label: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def primary(self) -> str | None:
        return next((r.primary for r in self.runs if r.primary), None)

    @property
    def higher_is_better(self) -> bool:
        return PRIMARY_METRICS.get(self.primary or "", True)

    def values(self) -> list[float]:
        return [r.value for r in self.runs if r.value is not None]

    def by_seed(self) -> dict[Any, float]:
        return {r.seed: r.value for r in self.runs if r.value is not None}

    def summary(self) -> Summary:
        return summarize(self.values())

    def items_by_seed(self, metric: str) -> dict[Any, Items]:
        return {r.seed: items for r in self.runs if (items := r.items(metric)) is not None}

    def mean_metric(self, metric: str) -> float | None:
        values = [float(r.metrics[metric]) for r in self.runs if r.metrics.get(metric) is not None]
        return sum(values) / len(values) if values else None


def find_results(dirs: list[Path]) -> list[Path]:
    found: set[Path] = set()
    for d in dirs:
        if d.is_file() and d.name == "results.json":
            found.add(d.resolve())
        elif d.is_dir():
            found.update(p.resolve() for p in d.rglob("results.json"))
    return sorted(found)


def load_run(path: Path) -> Run:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return Run(path.parent, "failed", f"unreadable results.json: {exc}", {}, {})
    status, error = str(data.get("status") or "unknown"), data.get("error")
    if status == "running" and process_alive(data) is False:  # SIGKILL, a power cut: nothing could write
        status, error = "killed", f"process {data['pid']} ended without a final status; resume=<run dir> continues it"
    return Run(
        path.parent,
        status,
        error,
        data.get("config") or {},
        data.get("metrics") or {},
        layers=[row for row in data.get("layers") or [] if isinstance(row, dict) and row.get("name") is not None],
        wandb=data.get("wandb") if isinstance(data.get("wandb"), dict) else None,
        command=data.get("command") if isinstance(data.get("command"), str) else None,
        test_items=data.get("test_items") if isinstance(data.get("test_items"), dict) else None,
    )


def group_key(config: dict) -> str:
    stripped = {k: v for k, v in config.items() if k not in RUN_SPECIFIC_KEYS}
    return json.dumps(stripped, sort_keys=True, default=str)


def group_runs(runs: list[Run]) -> list[Group]:
    """Completed runs grouped by their config without seed and paths; labels made unique by what differs."""
    groups: dict[str, Group] = {}
    for run in runs:
        if not run.completed:
            continue
        run.key = group_key(run.config)
        groups.setdefault(run.key, Group(run.key, [])).runs.append(run)
    result = sorted(groups.values(), key=lambda g: _base_label(g.first))
    for g in result:
        g.runs.sort(key=lambda r: (str(r.seed), str(r.path)))
    by_label: dict[str, list[Group]] = {}
    for g in result:
        by_label.setdefault(_base_label(g.first), []).append(g)
    for label, same in by_label.items():
        if len(same) == 1:
            same[0].label = label
            continue
        flats = [flatten_config({k: v for k, v in g.first.config.items() if k not in RUN_SPECIFIC_KEYS}) for g in same]
        keys = sorted({k for f in flats for k in f})
        differing = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
        for g, f in zip(same, flats):
            parts = [f"{k}={f.get(k, '-')}" for k in differing[:3]]
            g.label = f"{label} ({', '.join(parts)})"
    return result


def _base_label(run: Run) -> str:
    return "/".join(run.name(g) for g in ("data", "model", "sparsity", "hardware"))


# ----------------------------------------------------------------------------------------- comparisons


@dataclass
class Comparison:
    a: Group
    b: Group
    seeds: list
    diffs: list[float]
    summary: Summary
    verdict: str


def paired_comparisons(groups: list[Group]) -> list[Comparison]:
    """Pairs sharing data, model, hardware and seeds, differing in sparsity method (same sparsity, or dense)."""
    out: list[Comparison] = []
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            ca, cb = a.first.config, b.first.config
            if any(ca.get(k) != cb.get(k) for k in ("data", "model", "hardware")):
                continue
            if a.primary is None or a.primary != b.primary:
                continue
            if a.first.name("sparsity") == b.first.name("sparsity"):
                continue
            sa, sb = a.by_seed(), b.by_seed()
            if set(sa) != set(sb) or len(sa) < 2:
                continue
            dense = "dense" in (a.first.name("sparsity"), b.first.name("sparsity"))
            spa, spb = a.mean_metric("sparsity/global"), b.mean_metric("sparsity/global")
            same_sparsity = spa is not None and spb is not None and abs(spa - spb) <= SPARSITY_TOLERANCE
            if not (dense or same_sparsity):
                continue
            first, second = (b, a) if a.first.name("sparsity") == "dense" else (a, b)  # dense baseline is B
            s1, s2 = first.by_seed(), second.by_seed()
            seeds = sorted(s1, key=str)
            diffs = [s1[s] - s2[s] for s in seeds]
            metric = first.primary
            summary = paired_summary(diffs, first.items_by_seed(metric), second.items_by_seed(metric), seeds)
            out.append(Comparison(first, second, seeds, diffs, summary, _verdict(summary, first.higher_is_better)))
    return out


def _verdict(summary: Summary, higher_is_better: bool) -> str:
    if summary.ci is None:
        return "not distinguishable"
    lo, hi = summary.ci
    if lo > 0:
        return "A better" if higher_is_better else "B better"
    if hi < 0:
        return "B better" if higher_is_better else "A better"
    return "not distinguishable"
