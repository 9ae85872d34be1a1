"""`sparse-lab report DIR...`: a sweep's results.json files -> seed statistics, Pareto fronts, paired comparisons.

Runs that differ only in ``seed`` (and in run-specific paths) form a group; a group's primary metric is
summarised by mean, sample standard deviation and a 95% Student-t confidence interval. Groups that share
data, model, hardware and seeds but differ in sparsity method are compared seed by seed (paired t).
Writes ``report.csv`` (one row per run), ``report.md`` (one row per group) and PNG plots.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_lab.registry import component_name

# primary metric -> higher is better
PRIMARY_METRICS: dict[str, bool] = {"test/acc": True, "test/epe3d": False}
# config keys that say nothing about what was run (removed before grouping)
RUN_SPECIFIC_KEYS = ("seed", "paths", "hydra")
CSV_METRICS = (
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


# ----------------------------------------------------------------------------------------- statistics


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


# ----------------------------------------------------------------------------------------- collecting


@dataclass
class Run:
    path: Path
    status: str
    error: str | None
    config: dict
    metrics: dict
    key: str = ""

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
    return Run(
        path.parent,
        str(data.get("status") or "unknown"),
        data.get("error"),
        data.get("config") or {},
        data.get("metrics") or {},
    )


def group_key(config: dict) -> str:
    stripped = {k: v for k, v in config.items() if k not in RUN_SPECIFIC_KEYS}
    return json.dumps(stripped, sort_keys=True, default=str)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(d, default=str)}


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
        flats = [_flatten({k: v for k, v in g.first.config.items() if k not in RUN_SPECIFIC_KEYS}) for g in same]
        keys = sorted({k for f in flats for k in f})
        differing = [k for k in keys if len({f.get(k) for f in flats}) > 1]
        for g, f in zip(same, flats):
            parts = [f"{k}={json.loads(f[k]) if k in f else '-'}" for k in differing[:3]]
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
            summary = summarize(diffs)
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


# ----------------------------------------------------------------------------------------- formatting


def _num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}"


def _count(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _mean_std(s: Summary) -> str:
    if s.mean is None:
        return "-"
    return _num(s.mean) if s.std is None else f"{_num(s.mean)} ± {_num(s.std, 3)}"


def _ci(s: Summary) -> str:
    return "-" if s.ci is None else f"[{_num(s.ci[0])}, {_num(s.ci[1])}]"


def _metric_title(metric: str | None, higher: bool, compact: bool = False) -> str:
    if metric is None:
        return "-"
    if compact:
        return f"{metric} {'↑' if higher else '↓'}"
    return f"{metric} ({'higher' if higher else 'lower'} is better)"


GROUP_COLUMNS = (
    "group",
    "n",
    "metric",
    "mean ± std",
    "95% CI",
    "sparsity",
    "MACs dense / target",
    "params total / nonzero",
    "energy (uJ)",
    "latency (ms)",
    "speed-up realised",
)


def group_rows(groups: list[Group], compact: bool = False) -> list[list[str]]:
    rows = []
    for g in groups:
        s = g.summary()
        rows.append(
            [
                g.label,
                str(len(g.runs)),
                _metric_title(g.primary, g.higher_is_better, compact),
                _mean_std(s),
                _ci(s),
                _num(g.mean_metric("sparsity/global"), 3),
                f"{_count(g.mean_metric('macs/dense'))} / {_count(g.mean_metric('macs/target'))}",
                f"{_count(g.mean_metric('params/total'))} / {_count(g.mean_metric('params/nonzero'))}",
                _num(g.mean_metric("energy/uJ")),
                _num(g.mean_metric("latency/deployed_ms")),
                _num(g.mean_metric("speedup/realised"), 3),
            ]
        )
    return rows


def write_csv(runs: list[Run], path: Path) -> None:
    header = ["run_dir", "status", "data", "model", "sparsity", "hardware", "seed", "metric", "value", *CSV_METRICS]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in runs:
            metric = r.primary
            row = [str(r.path), r.status, r.name("data"), r.name("model"), r.name("sparsity"), r.name("hardware")]
            row += [r.seed if r.seed is not None else "", metric or "", r.value if r.value is not None else ""]
            row += [r.metrics.get(m, "") if r.metrics.get(m) is not None else "" for m in CSV_METRICS]
            writer.writerow(row)


def _md_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(runs: list[Run], groups: list[Group], comparisons: list[Comparison], plots: list[Path]) -> str:
    out = ["# sparse-lab report\n\n", f"{len(runs)} run(s), {len(groups)} group(s) of completed runs "]
    out.append("(runs that differ only in seed). Confidence intervals: 95%, Student t over seeds.\n\n")
    out.append("## Groups\n\n")
    out.append(_md_table(GROUP_COLUMNS, group_rows(groups)) if groups else "No completed runs.\n")
    failed = [r for r in runs if not r.completed]
    out.append("\n## Failed runs\n\n")
    if failed:
        out += [f"- `{r.path}` ({r.status}): {r.error or 'no error recorded'}\n" for r in failed]
    else:
        out.append("None.\n")
    out.append("\n## Paired comparisons\n\n")
    if comparisons:
        out.append(
            "Per-seed differences A − B of the primary metric; a winner only where the 95% paired t interval "
            "excludes 0.\n\n"
        )
        rows = [
            [
                c.a.label,
                c.b.label,
                _metric_title(c.a.primary, c.a.higher_is_better),
                ", ".join(f"{s}: {_num(d)}" for s, d in zip(c.seeds, c.diffs)),
                _num(c.summary.mean),
                _ci(c.summary),
                c.verdict,
            ]
            for c in comparisons
        ]
        out.append(_md_table(["A", "B", "metric", "A − B by seed", "mean", "95% CI", "verdict"], rows))
    else:
        out.append("No pairs (same data, model, hardware and seeds; another sparsity method at the same sparsity).\n")
    if plots:
        out.append("\n## Plots\n\n")
        out += [f"![{p.stem}]({p.name})\n" for p in plots]
    return "".join(out)


# ----------------------------------------------------------------------------------------- plots


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """Points not dominated by another with fewer (or equal) MACs and a better (or equal) metric; by MACs."""
    sign = 1.0 if higher_is_better else -1.0
    front: list[tuple[float, float]] = []
    best = -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * y > best:
            front.append((x, y))
            best = sign * y
    return front


def write_plots(groups: list[Group], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    metrics = sorted({g.primary for g in groups if g.primary})
    for metric in metrics:
        mine = [g for g in groups if g.primary == metric and g.summary().mean is not None]
        higher = PRIMARY_METRICS[metric]
        short = metric.split("/")[-1]
        direction = "higher is better" if higher else "lower is better"

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for hw in sorted({g.first.name("hardware") for g in mine}):
            pts = []
            for g in mine:
                macs = g.mean_metric("macs/target")
                if g.first.name("hardware") != hw or macs is None:
                    continue
                s = g.summary()
                pts.append((macs, s.mean))
                ax.errorbar(macs, s.mean, yerr=s.std or 0.0, fmt="o", alpha=0.6, color=f"C{_color(hw)}")
            front = pareto_front(pts, higher)
            if front:
                ax.plot(*zip(*front), "-", color=f"C{_color(hw)}", label=f"{hw} (Pareto front)")
        ax.set_xscale("log")
        ax.set_xlabel("MACs on the target per sample")
        ax.set_ylabel(f"{metric} ({direction})")
        ax.set_title(f"{metric} vs target MACs")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        path = out / f"pareto_{short}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

        fig, ax = plt.subplots(figsize=(7, 4.5))
        methods = sorted({g.first.name("sparsity") for g in mine})
        for i, method in enumerate(methods):
            pts = [
                (g.mean_metric("sparsity/global") or 0.0, g.summary())
                for g in mine
                if g.first.name("sparsity") == method
            ]
            pts.sort(key=lambda p: p[0])
            xs, ss = [p[0] for p in pts], [p[1] for p in pts]
            ax.errorbar(
                xs, [s.mean for s in ss], yerr=[s.std or 0.0 for s in ss], fmt="o-", color=f"C{i}", label=method
            )
        ax.set_xlabel("achieved sparsity (sparsity/global)")
        ax.set_ylabel(f"{metric} ({direction})")
        ax.set_title(f"{metric} vs sparsity, per method")
        ax.grid(alpha=0.3)
        if methods:
            ax.legend(fontsize=8)
        path = out / f"sparsity_{short}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _color(name: str) -> int:
    return sum(map(ord, name)) % 10


# ----------------------------------------------------------------------------------------- entry point


@dataclass
class Report:
    runs: list[Run]
    groups: list[Group]
    comparisons: list[Comparison]
    files: list[Path]


def build_report(dirs: list[Path], out: Path | None = None, plots: bool = True) -> Report | None:
    """Everything below ``dirs`` -> files in ``out`` (default: the first folder). None when no results.json."""
    paths = find_results(dirs)
    if not paths:
        return None
    runs = [load_run(p) for p in paths]
    groups = group_runs(runs)
    comparisons = paired_comparisons(groups)
    out = out or (dirs[0] if dirs[0].is_dir() else dirs[0].parent)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.csv"]
    write_csv(runs, files[0])
    pngs = write_plots(groups, out) if plots else []
    (out / "report.md").write_text(markdown(runs, groups, comparisons, pngs))
    files += [out / "report.md", *pngs]
    return Report(runs, groups, comparisons, files)


def print_report(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = group_rows(report.groups, compact=True)
    # columns with nothing in them (no latency measured, ...) are left out of the terminal table
    keep = [i for i, col in enumerate(GROUP_COLUMNS) if i < 5 or any(row[i] != "-" for row in rows)]
    table = Table(title=f"{len(report.groups)} group(s), {len(report.runs)} run(s); 95% CI: Student t over seeds")
    for i in keep:
        col = GROUP_COLUMNS[i]
        table.add_column(col, justify="left" if col in ("group", "metric") else "right", no_wrap=col == "group")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    console.print(table)
    failed = [r for r in report.runs if not r.completed]
    for r in failed:
        console.print(f"[red]{r.status}[/red] {r.path}: {r.error or 'no error recorded'}", soft_wrap=True)
    for c in report.comparisons:
        console.print(
            f"A = {c.a.label}  vs  B = {c.b.label}: A − B = {_num(c.summary.mean)} {_ci(c.summary)} -> {c.verdict}",
            soft_wrap=True,
        )
    console.print("written: " + ", ".join(str(f) for f in report.files), soft_wrap=True)


def main(args: list[str]) -> int:
    import sys

    out: Path | None = None
    dirs: list[Path] = []
    it = iter(args)
    for a in it:
        if a == "--out":
            value = next(it, None)
            if value is None:
                print("error: --out needs a folder", file=sys.stderr)
                return 2
            out = Path(value)
        elif a.startswith("--out="):
            out = Path(a.split("=", 1)[1])
        else:
            dirs.append(Path(a))
    if not dirs:
        print("error: usage: sparse-lab report DIR... [--out DIR]", file=sys.stderr)
        return 2
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    report = build_report(dirs, out)
    if report is None:
        print(f"error: no results.json found below {', '.join(str(d) for d in dirs)}", file=sys.stderr)
        return 2
    print_report(report)
    return 0
