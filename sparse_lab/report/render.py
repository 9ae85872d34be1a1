"""Tables for the terminal, report.csv and report.md."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from sparse_lab.report.runs import CSV_METRICS, Comparison, Group, Run
from sparse_lab.report.stats import Summary

if TYPE_CHECKING:
    from sparse_lab.report import Report


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
    "validation (last epoch)",
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
                _num(g.mean_metric(g.primary.replace("test/", "val/", 1)) if g.primary else None),
                _num(g.mean_metric("sparsity/global"), 3),
                f"{_count(g.mean_metric('macs/dense'))} / {_count(g.mean_metric('macs/target'))}",
                f"{_count(g.mean_metric('params/total'))} / {_count(g.mean_metric('params/nonzero'))}",
                _num(g.mean_metric("energy/uJ")),
                _num(g.mean_metric("latency/deployed_ms")),
                _num(g.mean_metric("speedup/realised"), 3),
            ]
        )
    return rows


def run_rows(runs: list[Run]) -> tuple[list[str], list[list]]:
    """report.csv's header and rows: one row per run (numbers as numbers, "" where missing)."""
    header = ["run_dir", "status", "data", "model", "sparsity", "hardware", "seed", "metric", "value", *CSV_METRICS]
    rows = []
    for r in runs:
        metric = r.primary
        row = [str(r.path), r.status, r.name("data"), r.name("model"), r.name("sparsity"), r.name("hardware")]
        row += [r.seed if r.seed is not None else "", metric or "", r.value if r.value is not None else ""]
        row += [r.metrics.get(m, "") if r.metrics.get(m) is not None else "" for m in CSV_METRICS]
        rows.append(row)
    return header, rows


def write_csv(runs: list[Run], path: Path) -> None:
    header, rows = run_rows(runs)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


GROUP_TABLE_COLUMNS = (
    "group",
    "data",
    "model",
    "method",
    "hardware",
    "n",
    "metric",
    "higher_is_better",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    *CSV_METRICS,
)


def group_table(groups: list[Group]) -> tuple[list[str], list[list]]:
    """One row per group with numbers as numbers (None where missing), for tables that sort and plot (W&B)."""
    rows = []
    for g in groups:
        s = g.summary()
        first = g.first
        rows.append(
            [g.label, first.name("data"), first.name("model"), first.name("sparsity"), first.name("hardware")]
            + [len(g.runs), g.primary, g.higher_is_better, s.mean, s.std]
            + [s.ci[0] if s.ci else None, s.ci[1] if s.ci else None]
            + [g.mean_metric(m) for m in CSV_METRICS]
        )
    return list(GROUP_TABLE_COLUMNS), rows


COMPARISON_TABLE_COLUMNS = ("A", "B", "metric", "seeds", "mean_A_minus_B", "ci_low", "ci_high", "verdict")


def comparison_table(comparisons: list[Comparison]) -> tuple[list[str], list[list]]:
    rows = [
        [c.a.label, c.b.label, c.a.primary, len(c.seeds), c.summary.mean]
        + [c.summary.ci[0] if c.summary.ci else None, c.summary.ci[1] if c.summary.ci else None, c.verdict]
        for c in comparisons
    ]
    return list(COMPARISON_TABLE_COLUMNS), rows


def _md_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(
    runs: list[Run],
    groups: list[Group],
    comparisons: list[Comparison],
    plots: list[Path],
    heatmaps: list[Path] | None = None,
) -> str:
    out = ["# sparse-lab report\n\n", f"{len(runs)} run(s), {len(groups)} group(s) of completed runs "]
    out.append("(runs that differ only in seed). Confidence intervals: 95%, Student t over seeds.\n\n")
    commands = list(dict.fromkeys(r.command for r in runs if r.command))  # the sweeps' command lines, in order
    if commands:
        out.append("Made by:\n\n```bash\n" + "\n".join(commands) + "\n```\n\n")
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
            "excludes 0. Where both groups recorded their test items, the interval also counts the test set's "
            "sampling error (seeds share the test set, so their spread cannot show it).\n\n"
        )
        rows = [
            [
                c.a.label,
                c.b.label,
                _metric_title(c.a.primary, c.a.higher_is_better),
                ", ".join(f"{s}: {_num(d)}" for s, d in zip(c.seeds, c.diffs)),
                _num(c.summary.mean),
                _ci(c.summary),
                c.summary.over(),
                c.verdict,
            ]
            for c in comparisons
        ]
        header = ["A", "B", "metric", "A − B by seed", "mean", "95% CI", "interval over", "verdict"]
        out.append(_md_table(header, rows))
    else:
        out.append("No pairs (same data, model, hardware and seeds; another sparsity method at the same sparsity).\n")
    if plots:
        out.append("\n## Plots\n\n")
        out += [f"![{p.stem}]({p.name})\n" for p in plots]
    if heatmaps:
        out.append("\n## Per-layer density\n\n")
        out.append(
            "One heatmap per model: rows are its prunable layers (network order), columns its groups (sparsity "
            "method, and what else differs), colour the final model's density (fraction of nonzero weights) "
            "averaged over seeds; grey where a group's model lacks the layer.\n\n"
        )
        out += [f"![{p.stem}]({p.name})\n" for p in heatmaps]
    return "".join(out)


TERMINAL_HEADERS = {  # GROUP_COLUMNS shown in the terminal, with shorter headers
    "group": "group",
    "n": "n",
    "metric": "metric",
    "mean ± std": "mean ± std",
    "95% CI": "95% CI",
    "validation (last epoch)": "val",
    "sparsity": "sparsity",
    "MACs dense / target": "MACs",
    "energy (uJ)": "µJ",
    "latency (ms)": "ms",
    "speed-up realised": "speed-up",
}


def print_report(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = group_rows(report.groups, compact=True)
    # columns with nothing in them (no latency measured, ...) are left out of the terminal table, and so are
    # the parameter counts (report.md has them); one metric for every group is named in the title
    metrics = {row[GROUP_COLUMNS.index("metric")] for row in rows}
    keep = [
        i
        for i, col in enumerate(GROUP_COLUMNS)
        if col in TERMINAL_HEADERS
        and (col != "metric" or len(metrics) > 1)
        and (i < 5 or any(row[i] != "-" for row in rows))
    ]
    title = f"{len(report.groups)} group(s), {len(report.runs)} run(s); 95% CI: Student t over seeds"
    table = Table(title=title + (f"; {next(iter(metrics))}" if len(metrics) == 1 else ""))
    for i in keep:
        col = GROUP_COLUMNS[i]
        # a long group label folds; numbers never do (rich would otherwise squeeze them to nothing)
        justify = "left" if col in ("group", "metric") else "right"
        wrap = {"overflow": "fold", "min_width": 20} if col == "group" else {"no_wrap": True}
        table.add_column(TERMINAL_HEADERS[col], justify=justify, **wrap)
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    console.print(table)
    failed = [r for r in report.runs if not r.completed]
    for r in failed:
        console.print(f"[red]{r.status}[/red] {r.path}: {r.error or 'no error recorded'}", soft_wrap=True)
    for c in report.comparisons:
        console.print(
            f"A = {c.a.label}  vs  B = {c.b.label}: A − B = {_num(c.summary.mean)} {_ci(c.summary)} "
            f"({c.summary.over()}) -> {c.verdict}",
            soft_wrap=True,
        )
    console.print("written: " + ", ".join(str(f) for f in report.files), soft_wrap=True)
