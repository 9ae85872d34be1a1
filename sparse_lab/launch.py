"""What each job of a sweep needs from the launcher that runs it (docs/scaling.md).

- **Threads.** n jobs running at once on C cores each get ``max(1, C // n)`` torch intra-op threads, so
  that parallel jobs do not fight over the cores (a job at torch's default 2 threads on 2 busy cores ran
  5-9x slower than at 1 thread; docs/scaling.md). Set in the job, where it starts (``cli.train_job``),
  from the launcher's config: joblib's ``n_jobs`` (-1 = one job per core), submitit's
  ``cpus_per_task``. An explicit ``OMP_NUM_THREADS`` wins over the rule, the config key ``threads``
  over both.
- **Failures.** A job that a launcher runs in another process (joblib, submitit) cannot tell the command
  that it failed except through its results.json: ``failed_sweep_jobs`` reads them when the sweep ends.
- **Objectives.** A sweeper that searches (Optuna) needs the job to return its metrics: the config key
  ``objectives`` names them (``[test/acc, macs/target]``); the job returns their values.

Nothing here imports torch at module level: each job imports this before the heavy imports.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from sparse_lab.errors import UserError

log = logging.getLogger(__name__)

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def threads_per_job(cores: int, jobs: int) -> int:
    """Torch threads for each of ``jobs`` jobs running at once on ``cores`` cores (at least 1)."""
    return max(1, cores // max(1, jobs))


def joblib_workers(n_jobs: int | None, cores: int) -> int:
    """How many jobs joblib runs at once for ``n_jobs``: -1 = all cores, -2 = all but one, ... (joblib's rule)."""
    if n_jobs is None:
        return 1
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return max(1, n_jobs)


def available_cores() -> int:
    """The cores this process may use, as joblib counts them (CPU affinity and cgroup quotas, which
    schedulers and containers set), so that the rule agrees with what joblib's workers are told."""
    try:
        from joblib import cpu_count
    except ImportError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpu_count()


def job_threads(
    threads: int | None, launcher: Mapping[str, Any], environ: Mapping[str, str], cores: int
) -> tuple[int | None, str]:
    """The torch thread count this job should use and why, or ``(None, "")`` to leave torch's default.

    ``threads``: the config key (wins); ``launcher``: ``hydra.launcher``; ``environ``: the job's
    environment (``OMP_NUM_THREADS`` wins over the per-launcher rule).
    """
    if threads is not None:
        if int(threads) < 1:
            raise UserError(f"threads must be a positive integer or null, got {threads}")
        return int(threads), f"threads={int(threads)}"
    target = str(launcher.get("_target_", ""))
    if target == JOBLIB:
        jobs = joblib_workers(launcher.get("n_jobs"), cores)
        rule, reason = threads_per_job(cores, jobs), f"{jobs} parallel jobs on {cores} cores"
    elif "hydra_submitit_launcher" in target and launcher.get("cpus_per_task"):
        rule, reason = int(launcher["cpus_per_task"]), f"hydra.launcher.cpus_per_task={launcher['cpus_per_task']}"
    else:
        return None, ""  # one job at a time (basic launcher): torch's default, every core
    # joblib's workers inherit OMP_NUM_THREADS from the command, or joblib sets it to cores // n_jobs itself.
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0 and int(omp) != rule:
        return int(omp), f"OMP_NUM_THREADS={omp}"
    return rule, reason


def set_job_threads(cfg: Mapping[str, Any], launcher: Mapping[str, Any]) -> int | None:
    """Apply ``job_threads`` to torch in this job; logs (to the console and the job's train.log) what it chose."""
    threads, reason = job_threads(cfg.get("threads"), launcher, os.environ, available_cores())
    if threads is None:
        return None
    import torch

    torch.set_num_threads(threads)
    log.info("torch threads: %d (%s)", torch.get_num_threads(), reason)
    return threads


def objective_values(names: Sequence[str] | None, results: Mapping[str, Any]) -> float | tuple[float, ...] | None:
    """The values of the metrics ``names`` in a run's results (what a searching sweeper optimises):
    one float for one name, a tuple for several, None when no objectives are configured."""
    if not names:
        return None
    if isinstance(names, str):
        names = [names]
    metrics = results.get("metrics", {})
    missing = [name for name in names if name not in metrics]
    if missing:
        raise UserError(f"objectives: no metric {missing[0]!r} in this run's results; it has: {', '.join(metrics)}")
    values = tuple(float(metrics[name]) for name in names)
    return values[0] if len(values) == 1 else values


# (sweep dir, launcher target) of each sweep this process started, recorded by SweepRecord.
SWEEPS: list[tuple[str, str]] = []


class SweepRecord(Callback):
    """Hydra callback (``hydra.callbacks`` in configs/hydra/default.yaml): notes where a sweep writes and
    which launcher runs it, in the process that launches it, for ``failed_sweep_jobs``."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        SWEEPS.append((str(config.hydra.sweep.dir), str(config.hydra.launcher.get("_target_", ""))))


def failed_sweep_jobs(since: float) -> list[int]:
    """After a sweep whose jobs ran in other processes (any launcher but Hydra's basic one, which runs them
    in this process): the numbers of its jobs whose results.json, written since ``since`` (a
    ``time.time()``), says ``failed``. Empty after a single run."""
    if not SWEEPS or SWEEPS[-1][1].endswith("BasicLauncher"):
        return []
    failed = []
    for path in Path(SWEEPS[-1][0]).glob("*/results.json"):
        try:
            if path.stat().st_mtime >= since and json.loads(path.read_text()).get("status") == "failed":
                failed.append(int(path.parent.name.split("_")[0]))  # <job number>_<data>_<model>_<sparsity>
        except (OSError, ValueError):
            continue
    return sorted(failed)
