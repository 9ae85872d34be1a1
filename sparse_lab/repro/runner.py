"""Runs a claim's sweeps (real `sparse-lab train -m` processes) and judges them into a JSON record."""

from __future__ import annotations

import datetime as dt
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from sparse_lab.launch import available_cores
from sparse_lab.report.runs import find_results, group_runs, load_run
from sparse_lab.report.stats import summarize
from sparse_lab.repro.checks import ClaimResult, judge_claim
from sparse_lab.repro.claims import Claim

# --quick: one seed and a handful of steps, to show that every claim's sweep runs and is judged.
QUICK_OVERRIDES = (
    "seed=0",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_checkpointing=false",
)


def sweep_command(claim: Claim, experiment: str, sweep_dir: Path, quick: bool) -> list[str]:
    command = ["sparse-lab", "train", "-m", f"experiment={experiment}"]
    if not quick:  # two jobs at a time on two cores, one thread each (`threads: null` under joblib)
        command.append("hydra/launcher=joblib")
    command += [f"hydra.sweep.dir={sweep_dir}", "trainer.enable_progress_bar=false", "logger=csv"]
    return command + list(QUICK_OVERRIDES if quick else ())


def run_sweeps(claim: Claim, out: Path, quick: bool, log=print) -> tuple[list[str], float]:
    """Each of the claim's sweeps in its own process (stdout and stderr to <out>/<claim>/<experiment>.log)."""
    commands, started = [], time.perf_counter()
    for experiment in claim.experiments:
        sweep_dir = out / claim.name / experiment
        sweep_dir.mkdir(parents=True, exist_ok=True)
        command = sweep_command(claim, experiment, sweep_dir, quick)
        commands.append(shlex.join(command))
        log_path = sweep_dir.parent / f"{experiment}.log"
        log(f"[{claim.name}] {shlex.join(command)}  (log: {log_path})")
        with open(log_path, "w") as stream:
            code = subprocess.call([sys.executable, "-m", "sparse_lab", *command[1:]], stdout=stream, stderr=stream)
        if code:  # failed jobs are kept in their results.json and listed by the record
            log(f"[{claim.name}] {experiment}: exit {code}, see {log_path}")
    return commands, time.perf_counter() - started


def judge(claim: Claim, out: Path) -> tuple[ClaimResult, list]:
    runs = [load_run(p) for p in find_results([out / claim.name])]
    failed = [r for r in runs if not r.completed]
    return judge_claim(group_runs(runs), list(claim.variants), list(claim.checks)), failed


def machine() -> str:
    return f"{platform.machine()}, {available_cores()} CPU cores, Python {platform.python_version()}"


def record(claim: Claim, result: ClaimResult, failed: list, commands: list[str], wall_s: float, quick: bool) -> dict:
    """What results.md is rendered from: the claim's numbers, its commands and how long they took."""
    import torch

    def summary(s) -> dict:
        return {"n": s.n, "mean": s.mean, "std": s.std, "ci": list(s.ci) if s.ci else None, "items": s.items}

    variants = []
    for variant in claim.variants:
        group = result.variants.get(variant.label)
        if group is None:
            continue
        values = {str(r.seed): claim.metric.of(r.metrics) for r in group.runs}
        columns = {
            m.key: summarize([v for r in group.runs if (v := m.of(r.metrics)) is not None]).mean for m in claim.columns
        }
        present = [v for v in values.values() if v is not None]
        variants.append(
            {"label": variant.label, "values": values, "summary": summary(summarize(present)), "columns": columns}
        )
    checks = [
        {
            "label": o.check.label(),
            "says": o.check.says,
            "kind": o.check.kind,
            "scale": o.check.metric.scale,
            "seeds": [str(s) for s in o.seeds],
            "values": o.values,
            "summary": summary(o.summary),
            "verdict": o.verdict,
        }
        for o in result.outcomes
    ]
    return {
        "claim": claim.name,
        "verdict": result.verdict,
        "variants": variants,
        "checks": checks,
        "missing": result.missing,
        "failed": [{"run": str(r.path), "status": r.status, "error": r.error} for r in failed],
        "commands": commands,
        "wall_s": round(wall_s, 1),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "torch": torch.__version__,
        "quick": quick,
    }
