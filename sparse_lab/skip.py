"""``skip_completed=true``: a job whose exact configuration already completed is not run again.

A sweep's folder is named by the time it started, so re-running the same command writes new folders;
the completed runs are therefore found by their *resolved config*, not by their folder: every
``results.json`` below ``paths.output_dir`` (and below the job's own sweep folder, when that lies
elsewhere) with status ``completed`` and the same resolved config -- ``skip_completed`` and ``resume``
aside -- counts. Failed, interrupted and killed runs do not: those jobs run again from the start
(``sparse-lab train resume=<run dir>`` continues one instead).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

IGNORED_KEYS = ("skip_completed", "resume")  # do not change what a run computes


def comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in IGNORED_KEYS}


def find_completed(config: dict, roots: list[Path]) -> Path | None:
    """The run directory of a completed run with ``config`` (resolved) below any of ``roots``."""
    wanted = comparable(config)
    seen: set[Path] = set()
    for root in roots:
        if not Path(root).is_dir():
            continue
        for path in sorted(Path(root).rglob("results.json")):
            if path in seen:
                continue
            seen.add(path)
            try:
                results = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if (
                isinstance(results, dict)
                and results.get("status") == "completed"
                and isinstance(results.get("config"), dict)
                and comparable(results["config"]) == wanted
            ):
                return path.parent
    return None


def completed_run(config: dict, run_dir: Path) -> dict | None:
    """The results of a completed run with this config (searched below ``paths.output_dir`` and the
    parent of ``run_dir``), or None: the job must run."""
    roots = [Path(run_dir).parent]
    output_dir = (config.get("paths") or {}).get("output_dir")
    if output_dir:
        roots.insert(0, Path(output_dir))
    found = find_completed(config, roots)
    if found is None:
        return None
    log.warning("skip_completed: this configuration already completed in %s; not run again", found)
    return json.loads((found / "results.json").read_text())
