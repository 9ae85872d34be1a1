"""W&B logging: runs of a sweep grouped by the sweep, tagged by their components, config filterable by key."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from sparse_lab.loggers import LAYER_COLUMNS, flatten_config, layer_rows, run_tags, sweep_name, wandb_group
from tests.conftest import run_cli

BLOCK, HEADER = 32768, 7  # W&B's transaction log is LevelDB's log format: 32 KiB blocks, 7-byte record headers
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_wandb_records(path: Path) -> list:
    """Every record of an offline ``run-<id>.wandb`` file, parsed with W&B's own protobuf schema (the
    installed wandb has no reader for its transaction log, so the framing is read here)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero padding (preallocated or unflushed tail)
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run(run_dir: Path, wait_s: float = 15.0) -> dict:
    """The W&B run a job wrote offline under <run_dir>/wandb/: its id, group, job type, tags, config keys.

    W&B's service process writes the log; on a loaded machine the last records can land a moment after
    the run has returned, so the file is read again until its run and summary records are there."""
    deadline = time.monotonic() + wait_s
    while True:
        logs = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        try:
            (log_file,) = logs
            records = read_wandb_records(log_file)
        except (ValueError, AssertionError, DecodeError):  # not there yet, or a record still being written
            records = []
        kinds = {r.WhichOneof("record_type") for r in records}
        if {"run", "summary"} <= kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs, f"no run record in {logs}"
    config_keys = {item.key for r in records if r.WhichOneof("record_type") == "config" for item in r.config.update}
    config_keys |= {item.key for run in runs for item in run.config.update}
    summary_keys = {item.key for r in records if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    return {
        "id": runs[0].run_id,
        "project": runs[0].project,
        "group": runs[0].run_group,
        "job_type": runs[0].job_type,
        "tags": list(runs[0].tags),
        "config_keys": config_keys,
        "summary_keys": summary_keys,
        "dir": log_file.parent,
    }


def test_flatten_config_gives_dotted_keys():
    config = {"seed": 0, "sparsity": {"name": "random", "sparsity": 0.9}, "model": {"optim": {"lr": 1e-3}}}
    config["logger"] = {"wandb": {"tags": ["a"], "group": None}, "empty": {}}
    assert flatten_config(config) == {
        "seed": 0,
        "sparsity.name": "random",
        "sparsity.sparsity": 0.9,
        "model.optim.lr": 1e-3,
        "logger.wandb.tags": ["a"],
        "logger.wandb.group": None,
        "logger.empty": {},
    }


def test_run_tags_name_the_components_then_the_users_tags():
    config = {
        "data": {"name": "digits"},
        "model": {"name": "vit"},
        "sparsity": {"_target_": "my_plugin.methods.MagnitudeDrop"},  # no name: the class's, lower-cased
        "hardware": {"name": "cpu"},
        "seed": 0,
    }
    assert run_tags(config, ["baseline", "vit"]) == ["digits", "vit", "magnitudedrop", "cpu", "baseline"]


def test_group_outside_a_sweep_is_the_explicit_one_or_none():
    assert sweep_name() is None  # no Hydra here: experiment.run called directly
    assert wandb_group(None) is None
    assert wandb_group("ablation") == "ablation"


def test_layer_rows_follow_the_columns():
    layers = [dict(name="fc.weight", shape=[10, 64], numel=640, nonzero=64, density=0.1, target_density=0.1)]
    assert LAYER_COLUMNS[:2] == ("name", "shape")
    assert layer_rows(layers) == [["fc.weight", "10x64", 640, 64, 0.1, 0.1]]


@pytest.mark.e2e
@pytest.mark.slow
def test_sweep_runs_are_grouped_by_the_sweep_in_wandb(tmp_path):
    proc = run_cli(
        "train",
        "-m",
        "sparsity=dense,random",
        "trainer=fast",
        "logger=wandb",
        "logger.wandb.tags=[baseline]",
        "deploy.export=false",
        "deploy.latency=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(tmp_path.glob("outputs/multirun/*/*/*/results.json"))
    assert len(results) == 2, proc.stdout[-2000:]
    sweep_dir = results[0].parent.parent
    assert all(r.parent.parent == sweep_dir for r in results)
    ids = set()
    for path, method in zip(results, ("dense", "random")):
        run = offline_run(path.parent)
        assert run["group"] == sweep_dir.name
        assert run["job_type"] == method
        assert run["tags"] == ["digits", "vit", method, "cpu", "baseline"]
        keys = {"sparsity.name", "model.name", "logger.wandb.project", *(["sparsity.sparsity"] * (method == "random"))}
        assert keys <= run["config_keys"]  # the config, flat: every key filterable on its own
        assert {"test/acc", "sparsity/global", "macs/target"} <= run["summary_keys"]  # the final metrics
        assert list(run["dir"].glob("files/media/table/layers_*.table.json")), "no per-layer density table"

        recorded = json.loads(path.read_text())
        assert recorded["status"] == "completed"
        wb = recorded["wandb"]
        assert wb["group"] == sweep_dir.name and wb["project"] == "sparse-lab" == run["project"]
        assert wb["id"] == run["id"] and wb["id"]
        assert Path(wb["dir"]) == run["dir"]
        ids.add(wb["id"])
    assert len(ids) == 2


@pytest.mark.slow
def test_an_explicit_group_is_used_outside_a_sweep(make_cfg, tmp_path):
    from sparse_lab.experiment import run

    results = run(make_cfg("logger=wandb", "logger.wandb.group=ablation", "sparsity=dense"), tmp_path / "run")
    wb = results["wandb"]
    assert wb["group"] == "ablation" and wb["job_type"] == "dense"
    recorded = offline_run(tmp_path / "run")
    assert recorded["group"] == "ablation" and recorded["id"] == wb["id"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["wandb"]["id"] == wb["id"]
