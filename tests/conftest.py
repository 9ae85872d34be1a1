from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sparse_lab.cli import CONFIG_DIR

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def isolated_global_state():
    """Undo what a run changes process-wide, so no test depends on the ones before it: Lightning's
    ``deterministic=True`` switches torch to deterministic algorithms and ``seed_everything`` seeds the
    global RNG and writes environment variables."""
    environ, rng = dict(os.environ), torch.get_rng_state()
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    os.environ.clear()
    os.environ.update(environ)
    torch.set_rng_state(rng)
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture
def make_cfg():
    """Compose the real config with overrides, as `sparse-lab train <overrides>` would."""

    def _make(*overrides: str):
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            # Exporting and timing the deployed model cost seconds a run: their own tests switch them on
            # (tests/hardware/test_deploy.py exports every model family).
            overrides = ["trainer=fast", "logger=none", "deploy.export=false", "deploy.latency=false", *overrides]
            return compose("config", overrides=overrides)

    return _make


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """The installed console script, run as a user would (in its own working directory)."""
    exe = Path(sys.executable).with_name("sparse-lab")
    env = {**os.environ, "WANDB_MODE": "offline", "COLUMNS": "120"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
