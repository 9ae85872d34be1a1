"""results.json: one file per run with its status, resolved config, final metrics and tables.

Written when the run starts (status "running"), after every round, and at the end ("completed" or
"failed" with the error), so a crash or a bad input never loses what was already measured.
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

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


class RunResults:
    def __init__(self, run_dir: Path, config: dict, write: bool = True):
        self.path = Path(run_dir) / "results.json"
        self.writes = write  # False on the ranks > 0 of a multi-process run: rank 0 writes the file
        self.started = time.time()
        self.data = {
            "status": "running",
            "error": None,
            "run_dir": str(run_dir),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "duration_s": 0.0,
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
        self.data["duration_s"] = round(time.time() - self.started, 2)
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
