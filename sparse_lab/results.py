"""results.json: one file per run with its status, resolved config, final metrics and tables.

Written when the run starts (status "running"), after every round, and at the end ("completed",
"failed" with the error, or "interrupted" by a signal), so a crash or a bad input never loses what was
already measured. "running" with a ``pid`` that is no longer alive on ``host`` means the process was
killed (SIGKILL, a node failure): ``sparse-lab train resume=<run dir>`` continues it.

A reproducibility record rides along: the seed, the command line as typed (``command``; for a sweep
job also ``rerun``, the command that runs that job alone), package versions and the git commit of the
sparse-lab checkout (``git``: commit and whether the tree had uncommitted changes).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

COMMAND_ENV = "SPARSE_LAB_COMMAND"  # the CLI puts the command line as typed here (Hydra rewrites sys.argv)

PACKAGES = (
    "sparse-lab",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "wandb",
    "spconv",
)


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def command_line() -> str:
    """The command that started this process, as a user can paste it."""
    return os.environ.get(COMMAND_ENV) or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def job_command() -> str | None:
    """Under Hydra, the command that runs this job alone: ``sparse-lab train`` and the job's overrides
    (for a sweep job, its own values rather than the sweep's lists); None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    overrides = HydraConfig.get().overrides
    search_path = [o for o in overrides.hydra if o.startswith("hydra.searchpath=")]  # plug-in configs
    return shlex.join(["sparse-lab", "train", *search_path, *overrides.task])


def git_revision(path: Path | None = None) -> dict:
    """The git commit of the checkout sparse-lab runs from, and whether its tracked files have
    uncommitted changes; ``"unknown"`` for an installed package, or where git is missing."""
    here = Path(path or Path(__file__).resolve().parent)
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # `git status` must not take the index lock

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10, env=env)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    # The package's own files must be tracked there (a virtual environment inside some checkout is not).
    if commit is None or git("ls-files", "--error-unmatch", "--", ".") is None:
        return {"commit": "unknown", "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def process_alive(data: dict) -> bool | None:
    """Whether the process a results.json names is alive: True / False on this host, None elsewhere."""
    pid, host = data.get("pid"), data.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunResults:
    def __init__(self, run_dir: Path, config: dict, write: bool = True, previous: dict | None = None):
        """``previous``: the results.json of the run being resumed; its rounds, start time, W&B run and
        command are kept, and the resume is recorded under ``resumed``."""
        self.path = Path(run_dir) / "results.json"
        self.writes = write  # False on the ranks > 0 of a multi-process run: rank 0 writes the file
        self.started = time.time()
        self.duration_before = 0.0
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started))
        git = git_revision()
        process = {"host": socket.gethostname(), "pid": os.getpid()}
        if previous is not None:
            self.duration_before = float(previous.get("duration_s") or 0.0)
            self.data = {
                **previous,
                "status": "running",
                "error": None,
                "config": config,
                **process,
                "versions": package_versions(),
                "resumed": [*previous.get("resumed", []), {"at": now, "command": command_line(), "git": git}],
            }
            self.write()
            return
        self.data = {
            "status": "running",
            "error": None,
            "run_dir": str(run_dir),
            "started": now,
            "duration_s": 0.0,
            "seed": config.get("seed"),
            "command": command_line(),
            "rerun": job_command(),
            "git": git,
            **process,
            "config": config,
            "metrics": {},
            "rounds": [],
            "sparsity": {},
            "layers": [],
            "macs_by_layer": [],
            "activations_by_layer": [],
            "versions": package_versions(),
        }
        self.write()

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.write()

    def finish(self, status: str, error: str | None = None) -> None:
        self.update(status=status, error=error)

    def write(self) -> None:
        self.data["duration_s"] = round(self.duration_before + time.time() - self.started, 2)
        if not self.writes:
            return
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)  # atomic: a reader never sees half a file


def flatten_config(config: dict, prefix: str = "") -> dict:
    """A nested config as one level of dotted keys (``sparsity.sparsity``, ``model.optim.lr``), so every
    key can be filtered and grouped by in the W&B dashboard. Lists stay values."""
    flat: dict = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat
