"""`sparse-lab report DIR...`: a sweep's results.json files -> seed statistics, Pareto fronts, paired comparisons.

Runs that differ only in ``seed`` (and in run-specific paths) form a group; a group's primary metric is
summarised by mean, sample standard deviation and a 95% Student-t confidence interval. Groups that share
data, model, hardware and seeds but differ in sparsity method are compared seed by seed (paired t).
Writes ``report.csv`` (one row per run), ``report.md`` (one row per group), PNG plots and a per-layer
density heatmap per model (``density_<model>.png``); ``--wandb`` also logs it all as one W&B run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sparse_lab.report.density import DensityMatrix, density_matrices, layer_densities
from sparse_lab.report.plots import pareto_front, write_heatmaps, write_plots
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
from sparse_lab.report.stats import summarize, summarize_paired, t_cdf_abs, t_quantile

__all__ = [
    "DensityMatrix",
    "Report",
    "build_report",
    "density_matrices",
    "find_results",
    "group_runs",
    "layer_densities",
    "load_run",
    "main",
    "paired_comparisons",
    "pareto_front",
    "print_report",
    "summarize",
    "summarize_paired",
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
    dirs: list[Path] = field(default_factory=list)
    out: Path | None = None
    plots: list[Path] = field(default_factory=list)  # pareto_<metric>.png, sparsity_<metric>.png
    heatmaps: list[Path] = field(default_factory=list)  # density_<model>.png

    @property
    def pngs(self) -> list[Path]:
        return [*self.plots, *self.heatmaps]


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
    heatmaps = write_heatmaps(density_matrices(groups), out) if plots else []
    (out / "report.md").write_text(markdown(runs, groups, comparisons, pngs, heatmaps))
    files += [out / "report.md", *pngs, *heatmaps]
    return Report(runs, groups, comparisons, files, list(dirs), out, pngs, heatmaps)


USAGE = "usage: sparse-lab report DIR... [--out DIR] [--no-plots] [--wandb [--wandb-project NAME]]"

HELP = f"""\
{USAGE}

Collect the results.json files below the folders (a sweep, several sweeps, single runs) into one report.
Runs that differ only in seed form a group: mean ± std and a 95% Student-t interval of the primary
metric (test/acc, or test/epe3d for scene flow), sparsity, MACs, parameters, energy, latency; failed
runs are listed; methods are compared seed by seed (paired t; where the runs recorded their test items,
the interval also counts the test set's sampling error).

Written to the first folder (or --out): report.csv (one row per run), report.md (groups, failed runs,
paired comparisons, plots), pareto_<metric>.png and sparsity_<metric>.png, and density_<model>.png: a
heatmap per model of the final per-layer density (rows: layers, columns: groups; mean over seeds).

options:
  --out DIR             where the files go (default: the first folder)
  --no-plots            report.csv and report.md only (e.g. a learning-rate search: nothing to plot)
  --wandb               also log the report as one W&B run (job type "report"): the group, run and
                        comparison tables as wandb.Table, the plots as wandb.Image; in the runs' W&B
                        project and group (else project sparse-lab, group = the sweep folder's name);
                        online when logged in, else offline under <out>/wandb/ (wandb sync uploads it)
  --wandb-project NAME  the W&B project for --wandb (default: the runs' own)
  -h, --help            this help
"""


def main(args: list[str]) -> int:
    import sys

    out: Path | None = None
    dirs: list[Path] = []
    wandb, project, plots = False, None, True
    it = iter(args)
    for a in it:
        if a in ("-h", "--help"):
            print(HELP, end="")
            return 0
        if a in ("--out", "--wandb-project"):
            value = next(it, None)
            if not value:
                print(f"error: {a} needs a {'folder' if a == '--out' else 'name'}", file=sys.stderr)
                return 2
            if a == "--out":
                out = Path(value)
            else:
                project = value
        elif a.startswith("--out="):
            out = Path(a.split("=", 1)[1])
        elif a.startswith("--wandb-project="):
            project = a.split("=", 1)[1]
        elif a == "--wandb":
            wandb = True
        elif a == "--no-plots":
            plots = False
        elif a.startswith("-"):
            print(f"error: unknown option {a!r}; {USAGE}", file=sys.stderr)
            return 2
        else:
            dirs.append(Path(a))
    if not dirs:
        print(f"error: {USAGE}", file=sys.stderr)
        return 2
    if project and not wandb:
        print("error: --wandb-project needs --wandb", file=sys.stderr)
        return 2
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    report = build_report(dirs, out, plots=plots)
    if report is None:
        print(f"error: no results.json found below {', '.join(str(d) for d in dirs)}", file=sys.stderr)
        return 2
    print_report(report)
    if wandb:
        return log_to_wandb(report, project)
    return 0


def log_to_wandb(report: Report, project: str | None = None) -> int:
    """--wandb: log the written report as one W&B run; one line saying where it went (or why it did not)."""
    import sys

    from sparse_lab.report.wandb_log import log_report

    try:
        where = log_report(report, report.out or Path.cwd(), project)
    except ImportError:
        print("error: --wandb needs the wandb package (pip install wandb); the report is written", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback; the files stay
        print(f"error: W&B: {type(exc).__name__}: {exc}; the report files are written", file=sys.stderr)
        return 2
    print(where.describe())
    return 0
