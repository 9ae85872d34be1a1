"""Multi-process runs: `trainer=ddp` as two CPU processes over gloo, supervised by sparse-lab itself."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from sparse_lab.distributed import RANKS_DIR, local_world_size, mask_digest, supervise
from sparse_lab.experiment import run
from tests.conftest import run_cli

SMALL = (
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "deploy.export=false",
    "deploy.latency=false",
)


@pytest.mark.slow
@pytest.mark.e2e
def test_two_process_ddp_rigl_run_from_the_cli(tmp_path):
    run_dir = tmp_path / "run"
    # delta_t=2: RigL updates its masks 4 times in the 12 steps (rank 0's results list them).
    args = ("train", "trainer=ddp", "sparsity=rigl", "sparsity.delta_t=2", *SMALL, f"hydra.run.dir={run_dir}")
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("results.json")) == ["run/results.json"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert len(results["sparsity"]["updates"]) == 4
    ddp = results["distributed"]
    # Checked after each of the 2 epochs and at the end of training, on both ranks.
    assert ddp["world_size"] == 2 and ddp["mask_checks"] == 3
    assert len(ddp["mask_digests"]) == 2 and len(set(ddp["mask_digests"])) == 1
    assert (run_dir / RANKS_DIR / "rank1.log").exists()
    # rank 0 writes them: the last epoch's checkpoint and round 0's end state (sparse_lab/checkpoints.py)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "round_0.pt"]


FAILING_DATA = """
import os
from sparse_lab.data.digits import DigitsDataModule


class FailsOnRankOne(DigitsDataModule):
    def setup(self, stage=None):
        if os.environ.get("RANK") == "1":
            raise RuntimeError("disk on rank 1 is gone")
        super().setup(stage)
"""


@pytest.mark.slow
def test_a_failing_rank_fails_the_run_with_its_error(make_cfg, tmp_path, monkeypatch):
    (tmp_path / "failing_data.py").write_text(textwrap.dedent(FAILING_DATA))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the workers import the plug-in dataset
    cfg = make_cfg("trainer=ddp", "+data._target_=failing_data.FailsOnRankOne", *SMALL)
    from sparse_lab.errors import UserError

    with pytest.raises(UserError, match="rank 1 failed: RuntimeError: disk on rank 1 is gone"):
        run(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed"
    assert results["error"] == "rank 1: RuntimeError: disk on rank 1 is gone"


def test_supervisor_stops_every_rank_when_one_fails(tmp_path):
    (tmp_path / "rank1.error").write_text("out of memory\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    failing = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert supervise([sleeper, failing], tmp_path) == (1, "out of memory")
    assert sleeper.poll() is not None  # stopped, not left running


def test_supervisor_reports_an_exit_code_without_an_error_file(tmp_path):
    ok = subprocess.Popen([sys.executable, "-c", "pass"])
    failing = subprocess.Popen([sys.executable, "-c", "import os; os.abort()"])
    rank, error = supervise([ok, failing], tmp_path)
    assert rank == 1 and error.startswith("exited with code -")


def test_spawning_strategies_are_refused(make_cfg, tmp_path):
    from sparse_lab.errors import UserError

    with pytest.raises(UserError, match="share the sparsity masks"):
        run(make_cfg("trainer.strategy=ddp_spawn", "trainer.devices=2"), tmp_path)


@pytest.mark.parametrize(
    "trainer, accelerator, expected",
    [
        ({"strategy": "ddp", "devices": 2}, "cpu", 2),
        ({"strategy": "ddp", "devices": "3"}, "cpu", 3),
        ({"strategy": "ddp", "devices": [0, 1]}, "gpu", 2),
        ({"strategy": "ddp", "devices": "auto"}, "cpu", 1),
        ({"strategy": "auto", "devices": 4}, "cpu", 1),
    ],
)
def test_processes_per_node(trainer, accelerator, expected):
    from omegaconf import OmegaConf

    assert local_world_size(OmegaConf.create(trainer), accelerator) == expected


def test_mask_digest_sees_one_flipped_bit():
    masks = {"a": torch.ones(4, 4, dtype=torch.bool), "b": torch.zeros(3, dtype=torch.bool)}
    flipped = {"a": masks["a"].clone(), "b": masks["b"]}
    flipped["a"][2, 1] = False
    assert mask_digest(masks) == mask_digest({k: v.clone() for k, v in masks.items()})
    assert mask_digest(masks) != mask_digest(flipped)
