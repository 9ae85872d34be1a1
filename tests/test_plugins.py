"""The README's plug-in example, run exactly as written: its files are written into a temporary folder
and its command block runs there with the installed `sparse-lab`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_lab.errors import UserError
from sparse_lab.experiment import run

README = Path(__file__).resolve().parent.parent / "README.md"
COMMANDS_MARKER = "<!-- plug-in commands"


def readme_example() -> tuple[dict[str, str], str]:
    """(files by path, the command block) of the README's plug-in section."""
    text = README.read_text()
    files = {}
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", text, re.S):
        first = block.splitlines()[0]
        if first.startswith("# my_lab/"):
            files[first[2:].strip()] = block
    after = text[text.index(COMMANDS_MARKER) :]
    commands = re.search(r"```bash\n(.*?)```", after, re.S).group(1)
    return files, commands


def test_readme_example_names_a_model_a_dataset_a_method_and_a_target():
    files, commands = readme_example()
    groups = {Path(p).parent.name for p in files if p.endswith(".yaml")}
    assert groups == {"model", "data", "sparsity", "hardware"}
    assert "sparsity=rigl" in commands and "sparsity=masksparsity" in commands


@pytest.mark.e2e
@pytest.mark.slow
def test_readme_plugin_example_runs_as_written(tmp_path):
    files, commands = readme_example()
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WANDB_MODE": "offline", "COLUMNS": "120"}
    done = subprocess.run(
        ["bash", "-e", "-c", commands], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny_cnn" in done.stdout and "magnitude_init" in done.stdout and "my_npu" in done.stdout  # `list`

    runs = {}
    for path in (tmp_path / "outputs" / "runs").rglob("results.json"):
        results = json.loads(path.read_text())
        runs[results["config"]["sparsity"].get("name") or results["config"]["sparsity"]["_target_"]] = results
    assert set(runs) == {"my_methods.MagnitudeAtInit", "rigl", "masksparsity"}
    assert all(r["status"] == "completed" for r in runs.values())

    mine = runs["my_methods.MagnitudeAtInit"]["metrics"]
    assert mine["test/acc"] > 0.5  # 4 classes: chance is 0.25
    assert abs(mine["sparsity/global"] - 0.7) < 0.01
    assert mine["macs/target"] == mine["macs/effective"] < mine["macs/dense"]  # MyNPU skips zeros
    assert mine["energy/uJ"] == pytest.approx(mine["macs/target"] * 0.3e-6)

    rigl = runs["rigl"]["metrics"]
    assert abs(rigl["sparsity/global"] - 0.8) < 0.01

    narrowed = runs["masksparsity"]
    assert narrowed["metrics"]["params/total"] < mine["params/total"]  # channels physically removed
    assert narrowed["metrics"]["macs/dense"] < mine["macs/dense"]


def test_a_plugin_dataset_without_info_is_one_clear_error(tmp_path, make_cfg, monkeypatch):
    (tmp_path / "bare_data.py").write_text(
        "import pytorch_lightning as pl\n\nclass Bare(pl.LightningDataModule):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_cfg("+data._target_=bare_data.Bare", "~data.name")
    with pytest.raises(UserError, match="must have `info`"):
        run(cfg, tmp_path / "run")
