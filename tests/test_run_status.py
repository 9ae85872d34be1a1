"""A run's status is always true: "interrupted" after SIGINT / SIGTERM (with the command that resumes it),
"failed" naming the step of a NaN loss, "running" only while its process lives; checkpoints are written
atomically; results.json records how to reproduce the run; skip_completed re-runs only what did not
complete; the same seed gives the same numbers."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from sparse_lab.errors import UserError
from sparse_lab.experiment import run
from sparse_lab.lifecycle import TrainingDiverged
from sparse_lab.results import git_revision, process_alive
from sparse_lab.safe_io import atomic_save
from tests.resume_helpers import faulty_args, faulty_cfg, in_process_cli, read

FAST = ["trainer=fast", "logger=none", "deploy.export=false", "deploy.latency=false"]


@pytest.fixture
def cli(tmp_path, monkeypatch, capfd):
    with in_process_cli(tmp_path, monkeypatch, capfd) as call:
        yield call


# -- signals -------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_stops_training_cleanly_says_how_to_resume_and_the_resume_completes(name, code, cli, tmp_path):
    args = [
        *faulty_args(tmp_path),
        *FAST,
        "model.signal_at=15",
        f"model.signal={name}",
        f"model.once_file={tmp_path / 'once'}",
    ]
    got, err, _ = cli("train", *args, "hydra.run.dir=run")
    lines = err.strip().splitlines()
    assert got == code, err
    assert (
        lines[-1]
        == f"interrupted by {name}: results.json in run says 'interrupted'; resume with: sparse-lab train resume=run"
    )
    results = read(tmp_path / "run")
    assert results["status"] == "interrupted"
    assert results["error"] == f"interrupted by {name}; resume with: sparse-lab train resume=run"
    # The reproducibility record: the command as typed, the seed, the code's version.
    assert results["command"] == shlex.join(["sparse-lab", "train", *args, "hydra.run.dir=run"])
    assert results["seed"] == 0 and results["versions"]["torch"]
    assert results["git"]["commit"] == "unknown" or re.fullmatch("[0-9a-f]{40}", results["git"]["commit"])
    # The last epoch's checkpoint (interrupted in epoch 1: the end of epoch 0) is what the resume continues.
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10

    code, err, out = cli("train", "resume=run")
    assert code == 0, err
    assert "resuming" in out and "round 0 from last.ckpt" in out
    resumed = read(tmp_path / "run")
    reference = run(OmegaConf.create(results["config"]), tmp_path / "reference")
    assert resumed["status"] == "completed" and resumed["error"] is None
    assert resumed["metrics"] == reference["metrics"] and resumed["rounds"] == reference["rounds"]


# -- a non-finite loss ----------------------------------------------------------------------------------
def test_a_nan_loss_fails_the_run_at_once_naming_the_step_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path):
    cfg = faulty_cfg(make_cfg, "logger=none", nan_at=13)  # epoch 1, batch 3
    with pytest.raises(TrainingDiverged) as raised:
        run(cfg, tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    where = "step 13 (round 0, epoch 1, batch 3)"
    message = f"train/loss is nan at {where}: training stopped; the last good checkpoint is {last}"
    assert str(raised.value) == message
    results = read(tmp_path)
    assert results["status"] == "failed" and results["error"] == message and results["metrics"] == {}
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 10  # the end of epoch 0, before the NaN
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


def test_a_nan_loss_is_one_line_and_a_nonzero_exit_from_the_cli(cli, tmp_path):
    code, err, _ = cli("train", *faulty_args(tmp_path), *FAST, "model.nan_at=2", "hydra.run.dir=run")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: train/loss is nan at step 2 (round 0")
    assert read(tmp_path / "run")["status"] == "failed"


# -- "running" only while alive --------------------------------------------------------------------------
def test_running_is_checked_against_the_process(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = {"pid": os.getpid(), "host": socket.gethostname()}
    assert process_alive(here) is True
    assert process_alive({**here, "pid": dead.pid}) is False
    assert process_alive({**here, "host": "elsewhere"}) is None


def test_git_revision_outside_a_checkout_is_unknown(tmp_path):
    assert git_revision(tmp_path) == {"commit": "unknown", "dirty": None}


# -- atomic files ----------------------------------------------------------------------------------------
def test_a_crash_between_writing_and_renaming_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 1, "w": torch.ones(3)}, path)

    def crash(*args):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed before the rename"):
        atomic_save({"step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


WRITER = """
import sys, torch
from sparse_lab.safe_io import atomic_save
path = sys.argv[1]
atomic_save({"step": 0, "w": torch.zeros(4)}, path)
big = {"w": torch.ones(16, 1024, 1024)}  # 64 MB: the kill lands mid-write
print("ready", flush=True)
step = 1
while True:
    atomic_save({"step": step, **big}, path)
    step += 1
"""


@pytest.mark.slow
def test_a_process_killed_while_writing_a_checkpoint_leaves_a_loadable_one(tmp_path):
    path = tmp_path / "last.ckpt"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)

    def partial() -> bool:  # the temporary file of a write under way, some megabytes in
        for tmp in tmp_path.glob(".last.ckpt.*.tmp"):
            try:
                if tmp.stat().st_size > 2**20:
                    return True
            except FileNotFoundError:  # renamed in between: the next write will do
                pass
        return False

    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not partial():
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.001)
    finally:
        child.kill()
        child.wait()
    (torn,) = list(tmp_path.glob(".last.ckpt.*.tmp"))  # killed mid-write: a partial file is left
    assert 0 < torn.stat().st_size < 64 * 2**20
    state = torch.load(path, weights_only=True, mmap=True)
    assert state["step"] == 0 or state["w"].shape == (16, 1024, 1024)


# -- same seed, same numbers; skip_completed --------------------------------------------------------------
@pytest.mark.slow
def test_the_same_seed_gives_identical_metrics(make_cfg, tmp_path):
    overrides = ["logger=none", "trainer.max_epochs=2", "sparsity=rigl", "sparsity.delta_t=4"]
    first = run(faulty_cfg(make_cfg, *overrides), tmp_path / "a")
    second = run(faulty_cfg(make_cfg, *overrides), tmp_path / "b")
    assert first["metrics"] == second["metrics"] and first["sparsity"] == second["sparsity"]


def test_skip_completed_skips_a_completed_job_and_runs_a_failed_one(cli, tmp_path):
    outputs = tmp_path / "outputs"
    args = [*faulty_args(tmp_path), *FAST, "trainer.max_epochs=2", "logger=none", f"paths.output_dir={outputs}"]
    assert cli("train", *args, "seed=0", f"hydra.run.dir={outputs / 'earlier_seed0'}")[0] == 0
    done = read(outputs / "earlier_seed0")
    (outputs / "earlier_seed1").mkdir()
    failed = {**done, "status": "failed", "error": "boom", "config": {**done["config"], "seed": 1}}
    (outputs / "earlier_seed1" / "results.json").write_text(json.dumps(failed))

    code, err, out = cli(
        "train", "-m", *args, "seed=0,1", "skip_completed=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"
    )
    assert code == 0, err
    job0, job1 = sorted((tmp_path / "sweep").glob("*_digits_faulty_random"))
    assert not (job0 / "results.json").exists()  # seed 0 completed before: not run again
    assert read(job1)["status"] == "completed" and read(job1)["config"]["seed"] == 1  # seed 1 had failed: run
    assert f"already completed in {outputs / 'earlier_seed0'}" in out


def test_skip_completed_is_off_by_default_and_never_matches_another_config(make_cfg, tmp_path):
    from sparse_lab.skip import find_completed

    cfg = OmegaConf.to_container(make_cfg(f"paths.output_dir={tmp_path}"), resolve=True)
    assert cfg["skip_completed"] is False and cfg["resume"] is None
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps({"status": "completed", "config": {**cfg, "seed": 5}}))
    assert find_completed(cfg, [tmp_path]) is None
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(
        json.dumps({"status": "completed", "config": {**cfg, "skip_completed": True}})
    )
    assert find_completed(cfg, [tmp_path]) == tmp_path / "b"


def test_resume_of_a_folder_that_is_not_a_run_is_one_line(cli, tmp_path):
    code, err, _ = cli("train", f"resume={tmp_path}")
    assert code == 2 and err.strip() == f"error: resume: {tmp_path} is not a sparse-lab run directory (no results.json)"
    with pytest.raises(UserError):
        run(OmegaConf.create({"resume": str(tmp_path / "nowhere")}), tmp_path)
