"""Sweeps through Hydra's launcher and sweeper plugins: joblib (parallel jobs, threads per job),
submitit (SLURM configs), Optuna (the job returns its objectives). docs/scaling.md."""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.config_repository import ConfigRepository
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins

from sparse_lab import launch
from sparse_lab.catalog import check_group_choices, hydra_groups, plugin_options
from sparse_lab.cli import CONFIG_DIR, main
from sparse_lab.errors import UserError
from sparse_lab.launch import JOBLIB, job_threads, joblib_workers, objective_values, threads_per_job
from tests.conftest import run_cli

QUICK = ["trainer=fast", "logger=none", "deploy.export=false", "deploy.latency=false"]
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def test_threads_per_job_shares_the_cores():
    assert [threads_per_job(2, n) for n in (1, 2, 3)] == [2, 1, 1]
    assert [threads_per_job(16, n) for n in (1, 2, 3, 4, 16, 32)] == [16, 8, 5, 4, 1, 1]
    assert [joblib_workers(n, 8) for n in (-1, -2, 1, 3, None)] == [8, 7, 1, 3, 1]  # joblib's meaning of n_jobs


def test_job_threads_rule_and_what_overrides_it():
    joblib = {"_target_": JOBLIB, "n_jobs": -1}
    assert job_threads(None, joblib, {}, cores=2) == (1, "2 parallel jobs on 2 cores")
    assert job_threads(None, {**joblib, "n_jobs": 2}, {}, cores=8)[0] == 4
    assert job_threads(None, joblib, {"OMP_NUM_THREADS": "1"}, cores=2)[0] == 1  # joblib's own setting: the same
    assert job_threads(None, {**joblib, "n_jobs": 2}, {"OMP_NUM_THREADS": "3"}, cores=8) == (3, "OMP_NUM_THREADS=3")
    assert job_threads(2, joblib, {"OMP_NUM_THREADS": "3"}, cores=8) == (2, "threads=2")  # the config key wins
    assert job_threads(None, {"_target_": SUBMITIT_LOCAL, "cpus_per_task": 4}, {}, cores=16)[0] == 4
    # One job at a time, or nothing said: torch's default.
    assert job_threads(None, {"_target_": BASIC}, {}, cores=2) == (None, "")
    assert job_threads(None, {"_target_": SUBMITIT_LOCAL, "cpus_per_task": None}, {}, cores=2) == (None, "")
    with pytest.raises(UserError, match="threads must be a positive integer"):
        job_threads(0, joblib, {}, cores=2)


def test_objective_values_are_the_named_metrics_in_order():
    results = {"metrics": {"test/acc": 0.9, "macs/target": 1200, "test/loss": 0.3}}
    assert objective_values(None, results) is None and objective_values([], results) is None
    assert objective_values(["test/acc"], results) == 0.9
    assert objective_values(["test/acc", "macs/target"], results) == (0.9, 1200.0)
    with pytest.raises(UserError, match="no metric 'test/accuracy'.*test/acc, macs/target"):
        objective_values(["test/accuracy"], results)


def test_plugin_options_agree_with_hydra():
    """`list` and the override check read the plugins' source; Hydra imports them. Same answer."""
    Plugins.instance()  # registers every installed plugin's configs
    repo = ConfigRepository(create_config_search_path(str(CONFIG_DIR)))
    found = hydra_groups(CONFIG_DIR)
    for group in ("hydra/launcher", "hydra/sweeper", "hydra/sweeper/sampler"):
        assert sorted(found[group]) == sorted(repo.get_group_options(group)), group
    assert {"basic", "joblib", "submitit_local", "submitit_slurm"} <= set(plugin_options()["hydra/launcher"])
    assert "slurm" in found["hydra/launcher"]  # configs/hydra/launcher/slurm.yaml


def test_launcher_and_sweeper_options_are_accepted_and_listed():
    for option in ("hydra/launcher=joblib", "hydra/launcher=submitit_slurm", "hydra/launcher=submitit_local"):
        check_group_choices(CONFIG_DIR, [option, "seed=0,1"])
    check_group_choices(CONFIG_DIR, ["hydra/launcher=slurm", "hydra/sweeper=optuna", "hydra/sweeper/sampler=nsgaii"])
    with pytest.raises(UserError, match="unknown hydra/launcher 'jobli'.*'joblib'"):
        check_group_choices(CONFIG_DIR, ["hydra/launcher=jobli"])
    with redirect_stdout(io.StringIO()) as out:
        assert main(["list"]) == 0
    listed = out.getvalue()
    assert "hydra/launcher:" in listed and "hydra/sweeper:" in listed
    for option in ("joblib", "submitit_slurm", "submitit_local", "slurm", "optuna"):
        assert f" {option} " in listed


def test_slurm_launcher_follows_the_ddp_trainer():
    """configs/hydra/launcher/slurm.yaml extends the plugin's submitit_slurm: one task per DDP process."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        overrides = ["hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.partition=gpu"]
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.nodes, launcher.partition) == (4, 2, "gpu")
    assert launcher.timeout_min == 240 and launcher.signal_delay_s == 120  # ours; the plugin's own keys remain


def test_failed_jobs_of_another_process_are_read_from_results_json(tmp_path, monkeypatch):
    for job, status in [("0_digits_vit_random", "completed"), ("1_digits_vit_random", "failed")]:
        (tmp_path / job).mkdir()
        (tmp_path / job / "results.json").write_text(json.dumps({"status": status}))
    monkeypatch.setattr(launch, "SWEEPS", [(str(tmp_path), JOBLIB)])
    assert launch.failed_sweep_jobs(since=0) == [1]
    assert launch.failed_sweep_jobs(since=time.time() + 60) == []  # written before this sweep: not ours
    monkeypatch.setattr(launch, "SWEEPS", [(str(tmp_path), BASIC)])  # in-process jobs report themselves
    assert launch.failed_sweep_jobs(since=0) == []


@pytest.mark.e2e
@pytest.mark.slow
def test_joblib_sweep_runs_two_jobs_with_a_share_of_the_cores_each(tmp_path, monkeypatch):
    from joblib import cpu_count

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the rule, not the caller's setting
    overrides = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "trainer.limit_train_batches=2"]
    result = run_cli("train", "-m", *overrides, *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent for p in tmp_path.glob("outputs/multirun/*/*/*/results.json"))
    assert [job.name for job in jobs] == ["0_digits_vit_random", "1_digits_vit_random"]
    expected = max(1, cpu_count() // 2)
    for job in jobs:
        assert json.loads((job / "results.json").read_text())["status"] == "completed"
        assert f"torch threads: {expected} (" in (job / "train.log").read_text()


@pytest.mark.e2e
@pytest.mark.slow
def test_optuna_sweep_optimises_the_returned_objectives(tmp_path):
    overrides = ["experiment=optuna_sparsity_lr", "hydra.sweeper.n_trials=2", "trainer.limit_train_batches=2"]
    result = run_cli("train", "-m", *overrides, *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = tmp_path.glob("outputs/multirun/*/*/")
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(trials) == 2 and {t["config"]["hardware"]["name"] for t in trials} == {"ideal"}
    front = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["solutions"]
    measured = [(t["metrics"]["test/acc"], t["metrics"]["macs/target"]) for t in trials]
    for solution in front:
        assert tuple(solution["values"]) in measured  # what each job returned: its test/acc and macs/target
        assert 0.5 <= solution["params"]["sparsity.sparsity"] <= 0.95


def test_sweep_configs_compose(make_cfg):
    cfg = make_cfg("experiment=optuna_sparsity_lr")
    assert list(cfg.objectives) == ["test/acc", "macs/target"] and cfg.hardware.name == "ideal"
    assert Path(CONFIG_DIR / "hydra" / "launcher" / "slurm.yaml").is_file()
