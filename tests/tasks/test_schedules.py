"""The learning-rate schedules hold for runs of any length, down to the few steps of a smoke test."""

import pytest

from sparse_lab.experiment import run


@pytest.mark.parametrize("steps", [3, 10])
def test_onecycle_runs_for_any_number_of_steps(make_cfg, tmp_path, steps):
    # 10 steps at warm-up 0.1 used to divide by zero inside torch's OneCycleLR (a one-step warm-up).
    cfg = make_cfg(
        "model.optim.schedule=onecycle",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    )
    results = run(cfg, tmp_path)
    assert results["status"] == "completed"
