"""Every model x every sparsity method trains a few steps in-process and reports sane metrics.

Models and methods are discovered from configs/, so a new one is covered the day it lands. Each
model runs on the dataset its config picks by default.
"""

import math

import pytest

from sparse_lab.cli import CONFIG_DIR
from sparse_lab.errors import IncompatibleError
from sparse_lab.experiment import run

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONFIG_DIR / "sparsity").glob("*.yaml"))
PRIMARY_METRICS = {"test/acc": (0.0, 1.0), "test/epe3d": (0.0, math.inf)}  # classification, scene flow


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_with_every_method(model, method, make_cfg, tmp_path):
    cfg = make_cfg(f"model={model}", f"sparsity={method}", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    try:
        results = run(cfg, tmp_path)
    except IncompatibleError as exc:  # declared by the method, with its reason
        pytest.skip(str(exc))
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
