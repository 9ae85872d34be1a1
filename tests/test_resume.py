"""Exact resume: a run interrupted (SIGKILL, SIGTERM) and continued with `sparse-lab train resume=<run dir>`
ends with exactly the metrics and sparsity of the same run uninterrupted. The interruption comes from the
model itself (tests/faulty_model.py signals its own process at a chosen step), so nothing depends on
timing; the uninterrupted reference runs the recorded config in this process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from sparse_lab import checkpoints
from sparse_lab.errors import RunInterrupted, UserError
from sparse_lab.experiment import run
from sparse_lab.results import process_alive
from sparse_lab.resume import cli_overrides, prepare
from sparse_lab.sparsity import METHODS
from tests.conftest import run_cli
from tests.faulty_model import FaultyCNN
from tests.resume_helpers import MODEL, ROOT, SMALL, faulty_args, faulty_cfg, in_process_cli, read


def same_outcome(resumed: dict, reference: dict) -> None:
    """Every metric, round and method record equal (nothing here is timed: deploy.latency=false)."""
    assert resumed["status"] == reference["status"] == "completed"
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["rounds"] == reference["rounds"]
    assert resumed["sparsity"] == reference["sparsity"] and resumed["layers"] == reference["layers"]


def interrupt_and_resume(cfg, tmp_path: Path) -> tuple[dict, dict, dict]:
    """Run ``cfg`` (its model sends SIGTERM to this process), resume it, run it uninterrupted: the
    results at the interruption, after the resume, and of the uninterrupted run."""
    run_dir = tmp_path / "run"
    with pytest.raises(RunInterrupted) as raised:
        run(cfg, run_dir)
    assert raised.value.signum == signal.SIGTERM and raised.value.run_dir == run_dir
    interrupted = read(run_dir)
    assert interrupted["status"] == "interrupted" and f"resume={run_dir}" in interrupted["error"]
    resumed = run(OmegaConf.create({"resume": str(run_dir)}), tmp_path / "ignored")
    assert resumed["run_dir"] == str(run_dir) and not (tmp_path / "ignored").exists()
    reference = run(OmegaConf.create(interrupted["config"]), tmp_path / "reference")
    return interrupted, read(run_dir), reference


@pytest.fixture
def cli(tmp_path, monkeypatch, capfd):
    with in_process_cli(tmp_path, monkeypatch, capfd) as call:
        yield call


# -- every method's state, in process -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,signal_at",
    [
        (["sparsity=masksparsity"], 45),  # round 1: the narrowed model, rebuilt from the selected channels
        (["sparsity=lottery", "sparsity.rounds=1", "sparsity.rewind_step=5"], 25),  # round 0, after θ_5
        (["sparsity=set", "sparsity.delta_t=4", "logger=wandb"], 25),  # regrowth by its own generator; W&B
    ],
    ids=["masksparsity-round1", "lottery-rewind", "set"],
)
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(overrides, signal_at, make_cfg, tmp_path):
    cfg = faulty_cfg(make_cfg, *overrides, signal_at=signal_at, once_file=str(tmp_path / "once"))
    interrupted, resumed, reference = interrupt_and_resume(cfg, tmp_path)
    same_outcome(resumed, reference)
    assert len(resumed["resumed"]) == 1
    if "wandb" in interrupted:  # the same W&B run goes on: no run with another id is started in the folder
        assert resumed["wandb"]["id"] == interrupted["wandb"]["id"] != reference["wandb"]["id"]
        # offline folders are named offline-run-<start second>-<id>, with a suffix such as -1 when both
        # starts fall in the same second: every one of them names the interrupted run's id
        folders = [f.name for f in (tmp_path / "run" / "wandb").glob("offline-run-*")]
        assert folders and all(f"-{interrupted['wandb']['id']}" in name for name in folders), folders


# -- through the CLI, killed --------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(
    "method,signal_at,round_index,step",
    [
        (["sparsity=rigl", "sparsity.delta_t=4"], 25, 0, 20),  # epoch 2 of round 0; masks and history grown
        (["sparsity=lottery", "sparsity.rounds=1"], 45, 1, 10),  # epoch 1 of round 1 (after pruning, rewound)
    ],
    ids=["rigl", "lottery-round1"],
)
def test_a_killed_run_resumed_through_the_cli_ends_as_if_never_killed(
    method, signal_at, round_index, step, cli, tmp_path, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # tests.faulty_model, for the console script
    run_dir = tmp_path / "run"
    args = [
        *faulty_args(tmp_path),
        "trainer=fast",
        "deploy.export=false",
        "deploy.latency=false",
        *method,
        f"model.signal_at={signal_at}",
        "model.signal=SIGKILL",
        f"model.once_file={tmp_path / 'once'}",  # the in-process reference run must not kill pytest
    ]
    killed = run_cli("train", *args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = read(run_dir)
    assert before["status"] == "running" and process_alive(before) is False  # the record of a killed run
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoints.checkpoint_state(last)["round"] == round_index and last["global_step"] == step

    rows_before = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    code, err, _ = cli("train", f"resume={run_dir}")  # sparse-lab's main, in this process (no start-up)
    assert code == 0, err[-3000:]
    after = read(run_dir)
    assert (
        after["command"] == before["command"] and after["resumed"][0]["command"] == f"sparse-lab train resume={run_dir}"
    )
    reference = run(OmegaConf.create(before["config"]), tmp_path / "reference")
    same_outcome(after, reference)
    for path in (run_dir / "checkpoints").iterdir():  # every file a run writes loads without pickle
        torch.load(path, weights_only=True)
    torch.load(run_dir / "final_model.pt", weights_only=True)
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in rows[0] and len(rows) > len(rows_before)  # the killed session's rows, then the resumed one's


# -- what resume refuses -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A run interrupted (SIGTERM) in epoch 1, after its first checkpoint."""
    from hydra import compose, initialize_config_dir

    from sparse_lab.cli import CONFIG_DIR

    tmp = tmp_path_factory.mktemp("interrupted")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["trainer=fast", "deploy.export=false", "deploy.latency=false", *SMALL])
    with open_dict(cfg):
        cfg.model = {**MODEL, "signal_at": 12}
    # What conftest's isolated_global_state undoes for each test (this fixture outlives one).
    environ, rng = dict(os.environ), torch.get_rng_state()
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with pytest.raises(RunInterrupted):
        run(cfg, tmp / "run")
    os.environ.clear()
    os.environ.update(environ)
    torch.set_rng_state(rng)
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)
    return tmp / "run"


def copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_resume_refuses_a_truncated_checkpoint(interrupted_run, tmp_path):
    run_dir = copy_run(interrupted_run, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"last.ckpt cannot be read \(truncated, corrupt or not a checkpoint\)"):
        prepare(run_dir)


def test_resume_refuses_a_pickled_object_and_a_foreign_checkpoint(interrupted_run, tmp_path):
    run_dir = copy_run(interrupted_run, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"model": FaultyCNN(10, 32, 3)}, last)  # a module: not loadable with weights_only=True
    with pytest.raises(UserError, match="cannot be read"):
        prepare(run_dir)
    torch.save({"state_dict": {}}, last)  # Lightning-like, not written by sparse-lab
    with pytest.raises(UserError, match="not written by a sparse-lab run"):
        prepare(run_dir)
    results = read(run_dir)
    results["config"]["seed"] = 1  # the checkpoint now belongs to another configuration
    (run_dir / "results.json").write_text(json.dumps(results))
    torch.save(torch.load(interrupted_run / "checkpoints" / "last.ckpt", weights_only=True), last)
    with pytest.raises(UserError, match="belongs to another run"):
        prepare(run_dir)


def test_resume_refuses_what_is_not_an_interrupted_run(interrupted_run, tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        prepare(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"not a sparse-lab run directory \(no results.json\)"):
        prepare(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        prepare(tmp_path)
    run_dir = copy_run(interrupted_run, tmp_path / "run")
    (run_dir / "results.json").write_text(json.dumps({**read(run_dir), "status": "completed"}))
    with pytest.raises(UserError, match="already completed; nothing to resume"):
        prepare(run_dir)


def test_resume_takes_no_other_override(tmp_path):
    with pytest.raises(UserError, match="takes no other override or option, got 'seed=1'"):
        cli_overrides([f"resume={tmp_path}", "seed=1"])
    with pytest.raises(UserError, match="takes no other override or option, got '-m'"):
        cli_overrides(["-m", f"resume={tmp_path}"])
    assert cli_overrides(["seed=1", "resume=null"]) == ["seed=1", "resume=null"]


def test_a_bad_resume_is_one_line_and_exit_2_from_the_cli(interrupted_run, cli, tmp_path):
    run_dir = copy_run(interrupted_run, tmp_path / "run")
    (run_dir / "checkpoints" / "round_0.pt").write_bytes(b"not a checkpoint")
    before = (run_dir / "results.json").read_text()
    code, err, _ = cli("train", f"resume={run_dir}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "round_0.pt cannot be read" in lines[0]
    assert (run_dir / "results.json").read_text() == before  # a refused resume changes nothing


def test_a_resume_of_a_run_still_running_is_refused(interrupted_run, tmp_path):
    run_dir = copy_run(interrupted_run, tmp_path / "run")
    results = read(run_dir)  # this process: alive
    (run_dir / "results.json").write_text(json.dumps({**results, "status": "running"}))
    with pytest.raises(UserError, match="is still running"):
        cli_overrides([f"resume={run_dir}"])


def test_every_methods_state_loads_with_weights_only(tmp_path):
    """What a method puts in a checkpoint is plain data (lottery's θ_0, MaskSparsity's selection and
    statistics, the generators of the dynamic methods)."""
    example = torch.zeros(1, 3, 32, 32)
    for name, options in [
        ("lottery", {"rounds": 2, "rewind_step": 3}),
        ("masksparsity", {}),
        ("set", {}),
        ("dsl", {}),
        ("gmp", {}),
        ("nm", {}),
        ("random", {}),
    ]:
        method = METHODS.from_config({"name": name, **options})
        model = FaultyCNN(10, 32, 3)
        method.attach(model, seed=0, example_input=example)
        if name == "masksparsity":
            method.select(model, example)
        checkpoints.atomic_save({"method": method.state_dict()}, tmp_path / f"{name}.pt")
        state = torch.load(tmp_path / f"{name}.pt", weights_only=True)["method"]
        again = METHODS.from_config({"name": name, **options})
        again.attach(FaultyCNN(10, 32, 3), seed=0, example_input=example)
        again.load_state_dict(state)
        assert again.state_dict().keys() == method.state_dict().keys(), name
