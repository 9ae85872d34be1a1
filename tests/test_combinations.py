"""Every model x every sparsity method trains a few steps in-process and reports sane metrics.

Models and methods are discovered from configs/, so a new one is covered the day it lands. Each
model runs on the dataset its config picks by default, kept small by generic rules: a model with
presets runs its ``tiny`` preset, batches are small, and an iterative method runs one pruning round.
"""

import csv
import math

import pytest
from hydra import compose, initialize_config_dir

from sparse_lab import test_items
from sparse_lab.cli import CONFIG_DIR
from sparse_lab.errors import IncompatibleError
from sparse_lab.experiment import run

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


def one_config_per_method() -> list[str]:
    """Presets of one method (nm, nm14, nm24, nm48) share its code: the first by name stands for all.

    Each option is composed as `sparse-lab train sparsity=<option>` would, so a preset that takes `name`
    from another config through its defaults list counts as that method."""
    chosen: dict[str, str] = {}
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for path in sorted((CONFIG_DIR / "sparsity").glob("*.yaml")):
            sparsity = compose("config", overrides=[f"sparsity={path.stem}"]).sparsity
            chosen.setdefault(sparsity.get("name") or sparsity.get("_target_"), path.stem)
    return sorted(chosen.values())


METHODS = one_config_per_method()
# Combinations rejected before training, with a one-line reason (listed in docs/methods.md).
INCOMPATIBLE: set[tuple[str, str]] = set()  # every model family declares channel groups for masksparsity
PRIMARY_METRICS = {"test/acc": (0.0, 1.0), "test/epe3d": (0.0, math.inf)}  # classification, scene flow


def smoke_overrides(model: str, method: str, make_cfg) -> list[str]:
    cfg = make_cfg(f"model={model}", f"sparsity={method}")
    overrides = ["data.batch_size=8"]
    if "eval_batch_size" in cfg.data:
        overrides.append("data.eval_batch_size=8")
    if "preset" in cfg.model:
        overrides.append("model.preset=tiny")
    if "rounds" in cfg.sparsity:
        overrides.append("sparsity.rounds=1")
    return overrides


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_with_every_method(model, method, make_cfg, tmp_path):
    cfg = make_cfg(
        f"model={model}",
        f"sparsity={method}",
        "logger=csv",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        *smoke_overrides(model, method, make_cfg),
    )
    if (model, method) in INCOMPATIBLE:
        with pytest.raises(IncompatibleError, match="offers no prunable channel groups"):
            run(cfg, tmp_path)
        return
    results = run(cfg, tmp_path)
    m = results["metrics"]
    assert results["status"] == "completed"
    primary = next(k for k in PRIMARY_METRICS if k in m)  # the task's primary metric
    low, high = PRIMARY_METRICS[primary]
    assert low <= m[primary] <= high and math.isfinite(m["test/loss"])
    assert m["sparsity/global"] >= m["sparsity/target"] - 1e-3
    assert 0 < m["macs/effective"] <= m["macs/dense"]
    assert 0 < m["params/nonzero"] <= m["params/total"]
    assert (tmp_path / "results.json").is_file() and (tmp_path / "final_model.pt").is_file()
    assert len(results["rounds"]) >= 1
    # Each epoch logs the global sparsity and every prunable layer's density.
    (csv_log,) = tmp_path.rglob("metrics.csv")
    with open(csv_log) as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys()
    assert "sparsity/global" in columns
    # The last validation epoch's metrics are kept (hyperparameters are chosen on them, never on test).
    val = {k: v for k, v in m.items() if k.startswith("val/")}
    assert val and all(k in r for r in results["rounds"] for k in val)
    for key, value in val.items():
        logged = [float(r[key]) for r in rows if r.get(key) and not r.get("macs/dense")]  # not the final row
        assert value == pytest.approx(logged[-1])
    assert {f"density/{row['name']}" for row in results["layers"]} <= set(columns)
    if primary == "test/acc":  # the test item by item, for intervals that count the test set's sampling error
        values, groups = test_items.load(tmp_path, results["test_items"], "test/acc")
        assert values.mean() == pytest.approx(m["test/acc"], abs=1e-6) and len(groups) == len(values)
