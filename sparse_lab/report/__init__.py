"""`sparse-lab report DIR...`: a sweep's results.json files -> seed statistics, Pareto fronts, paired comparisons.

Runs that differ only in ``seed`` (and in run-specific paths) form a group; a group's primary metric is
summarised by mean, sample standard deviation and a 95% Student-t confidence interval. Groups that share
data, model, hardware and seeds but differ in sparsity method are compared seed by seed (paired t).
Writes ``report.csv`` (one row per run), ``report.md`` (one row per group) and PNG plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparse_lab.report.plots import pareto_front, write_plots
from sparse_lab.report.render import markdown, print_report, write_csv
from sparse_lab.report.runs import (
    Comparison,
    Group,
    Run,
    find_results,
    group_runs,
    load_run,
    paired_comparisons,
)
from sparse_lab.report.stats import summarize, t_cdf_abs, t_quantile

__all__ = [
    "Report",
    "build_report",
    "find_results",
    "group_runs",
    "load_run",
    "main",
    "paired_comparisons",
    "pareto_front",
    "print_report",
    "summarize",
    "t_cdf_abs",
    "t_quantile",
]


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
