"""The command line as a user meets it: help, list, bad input, a real run, a sweep, W&B offline."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli


def test_help_and_list_do_not_import_torch():
    code = (
        "import sys, io, contextlib\n"
        "from sparse_lab.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['--help']) == 0 and main(['list']) == 0\n"
        "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, sorted(sys.modules)\n"
        "print(out.getvalue())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "sparse-lab <command>" in result.stdout and "train [overrides]" in result.stdout
    for group, option in [
        ("model", "vit"),
        ("model", "mobilenet_v2"),
        ("sparsity", "random"),
        ("logger", "wandb"),
        ("data", "cifar10"),
        ("trainer", "fast"),
        ("hardware", "cpu"),
    ]:
        assert f"{group}:" in result.stdout and f" {option} " in result.stdout


def test_every_config_option_has_a_description():
    from sparse_lab.catalog import HIDDEN_GROUPS, description, groups
    from sparse_lab.cli import CONFIG_DIR

    for group, options in groups(CONFIG_DIR).items():
        for option in options:
            if group not in HIDDEN_GROUPS:
                assert description(CONFIG_DIR / group / f"{option}.yaml"), f"{group}/{option}.yaml"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "model=nosuch"], "error: unknown model 'nosuch'; choose one of: "),
        (["train", "sparsity.sparsity=1.5"], "error: sparsity.sparsity must be a number in [0, 1), got 1.5"),
        (["train", "nosuchkey=1"], "error: Could not override 'nosuchkey': no such config key"),
        (["frobnicate"], "error: unknown command 'frobnicate'"),
        pytest.param(
            ["train", "hardware=cuda"],
            "error: hardware=cuda needs a CUDA GPU, and torch sees none",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p.parent for p in root.glob("outputs/runs/*/*/results.json")]
    return run_dir


@pytest.mark.e2e
@pytest.mark.slow
def test_train_end_to_end_through_the_cli(tmp_path):
    result = run_cli("train", "trainer=fast", "logger=wandb", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.endswith("_digits_vit_random")  # <time>_<data>_<model>_<sparsity>
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    metrics = results["metrics"]
    for key in (
        "test/acc",
        "sparsity/global",
        "sparsity/target",
        "macs/dense",
        "macs/effective",
        "params/total",
        "params/nonzero",
    ):
        assert key in metrics
    assert metrics["sparsity/global"] == pytest.approx(0.8, abs=1e-3)
    assert results["config"]["model"]["name"] == "vit" and results["versions"]["torch"]
    assert results["layers"] and all(set(r) >= {"name", "density", "target_density"} for r in results["layers"])
    # The deployed weights: masks applied, loadable without pickle.
    state = torch.load(run_dir / "final_model.pt", weights_only=True)
    prunable = {r["name"]: r for r in results["layers"]}
    for name, row in prunable.items():
        assert int(torch.count_nonzero(state[name])) == row["nonzero"]
    assert "test/acc" in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "test accuracy" in result.stdout  # the summary table
    # W&B offline: the run's binary log holds the metric keys.
    (wandb_log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    raw = wandb_log.read_bytes()
    for key in (b"train/loss", b"val/acc", b"test/acc", b"sparsity/global", b"macs/effective"):
        assert key in raw


@pytest.mark.e2e
@pytest.mark.slow
def test_multirun_sweep_writes_one_dir_per_job(tmp_path):
    result = run_cli(
        "train",
        "-m",
        "model=vit,mobilenet_v2",
        "sparsity=dense",
        "trainer=fast",
        "logger=none",
        "trainer.limit_train_batches=2",
        "deploy.export=false",  # deployment has its own tests (tests/hardware/test_deploy.py)
        "deploy.latency=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent.name for p in tmp_path.glob("outputs/multirun/*/*/*/results.json"))
    assert jobs == ["0_digits_vit_dense", "1_digits_mobilenet_v2_dense"]


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = run_cli("train", "model=mobilenet_v2", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0 and "name: mobilenet_v2" in result.stdout
    assert not (tmp_path / "outputs").exists()
