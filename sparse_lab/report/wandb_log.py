"""`sparse-lab report --wandb`: the report as one W&B run (job type "report") in the sweep's W&B group.

The run goes where the sweep's runs went (results.json ``"wandb"``: their project and group); runs that
did not log to W&B get the sweep folder's name as group (what a sweep's runs are grouped by) and the
project of ``configs/logger/wandb.yaml``. Online when logged in, offline otherwise (never a prompt);
the run's files go under the report's folder (``<out>/wandb/``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sparse_lab.report.render import comparison_table, group_table, run_rows
from sparse_lab.report.runs import Run

if TYPE_CHECKING:
    from sparse_lab.report import Report

DEFAULT_PROJECT = "sparse-lab"  # configs/logger/wandb.yaml's, when that file cannot be read


@dataclass
class WandbTarget:
    project: str
    group: str
    mode: str  # online | offline | disabled
    id: str | None = None
    dir: Path | None = None  # <out>/wandb/offline-run-*/ (or run-*/ online)
    url: str | None = None

    def describe(self) -> str:
        where = f"project {self.project}, group {self.group}, job type report"
        if self.mode == "disabled":
            return f"W&B: disabled (WANDB_MODE=disabled), nothing logged ({where})"
        if self.mode == "offline":
            return f"W&B: offline run {self.id} ({where}) in {self.dir}; upload with: wandb sync {self.dir}"
        return f"W&B: {self.url or self.id} ({where}); local files in {self.dir}"


def default_project() -> str:
    """``wandb.project`` of configs/logger/wandb.yaml: where `logger=wandb` runs go unless told otherwise."""
    try:
        from omegaconf import OmegaConf

        from sparse_lab.cli import CONFIG_DIR

        return str(OmegaConf.load(CONFIG_DIR / "logger" / "wandb.yaml").wandb.project or DEFAULT_PROJECT)
    except Exception:  # noqa: BLE001 - a missing or edited config file must not stop a report
        return DEFAULT_PROJECT


def sweep_folder(runs: list[Run]) -> Path:
    """The deepest folder holding every run's folder: a sweep's folder (outputs/multirun/<date>/<time>),
    or a single run's own folder."""
    dirs = [str(r.path.resolve()) for r in runs]
    return Path(os.path.commonpath(dirs)) if dirs else Path.cwd()


def target(runs: list[Run], project: str | None = None) -> WandbTarget:
    """Project and group of the report's W&B run: the runs' own when they share one, else the default
    project and the sweep folder's name; ``project`` (``--wandb-project``) wins."""
    infos = [r.wandb for r in runs if r.wandb]
    groups = {str(i["group"]) for i in infos if i.get("group")}
    projects = {str(i["project"]) for i in infos if i.get("project")}
    group = groups.pop() if len(groups) == 1 else sweep_folder(runs).name
    if not project:
        project = projects.pop() if len(projects) == 1 else default_project()
    return WandbTarget(project=project, group=group, mode="")


def log_report(report: Report, out: Path, project: str | None = None) -> WandbTarget:
    """One W&B run, job type "report": the group table (``groups``), one row per run (``runs``), the paired
    comparisons (``comparisons``) as ``wandb.Table``s and every PNG as a ``wandb.Image`` (``plots/<name>``)."""
    from sparse_lab.loggers import resolve_wandb_mode

    where = target(report.runs, project)
    where.mode = resolve_wandb_mode("auto")
    if where.mode == "disabled":
        return where
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    config = {
        "report.dirs": [str(d) for d in report.dirs],
        "report.runs": len(report.runs),
        "report.groups": len(report.groups),
        "report.failed": sum(not r.completed for r in report.runs),
        "report.run_ids": sorted({str(r.wandb["id"]) for r in report.runs if r.wandb and r.wandb.get("id")}),
    }
    init = dict(project=where.project, group=where.group, job_type="report", name="report", dir=str(out))
    init["settings"] = wandb.Settings(console="off", silent=True)  # the terminal output stays the report's
    try:
        run = wandb.init(**init, mode=where.mode, config=config)
    except Exception as exc:  # noqa: BLE001 - W&B unreachable: keep the report, log it offline
        if where.mode != "online":
            raise
        print(f"warning: W&B online failed ({exc}); logging the report offline", file=sys.stderr)
        where.mode = "offline"
        run = wandb.init(**init, mode="offline", config=config)
    try:
        tables = {"groups": group_table(report.groups), "runs": run_rows(report.runs)}
        if report.comparisons:
            tables["comparisons"] = comparison_table(report.comparisons)
        media: dict = {  # "" (report.csv's blank) is None here: a W&B column holds one type
            name: wandb.Table(columns=cols, data=[[None if v == "" else v for v in row] for row in rows])
            for name, (cols, rows) in tables.items()
        }
        media.update({f"plots/{p.stem}": wandb.Image(str(p), caption=p.name) for p in report.pngs})
        run.log(media)
        where.id, where.url = run.id, getattr(run, "url", None)
        where.dir = Path(run.dir).parent  # run.dir is the run's files/
    finally:
        run.finish()
    return where
