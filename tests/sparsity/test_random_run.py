"""MobileNetV2 with 90% uniform random pruning (the `mobilenet_uniform90` recipe), in-process and short."""

import pytest
import torch


def test_mobilenet_uniform_90_is_exact_per_layer_and_stays_zero(make_cfg, tmp_path):
    from sparse_lab.experiment import run

    cfg = make_cfg("model=mobilenet_v2", "sparsity=random", "sparsity.sparsity=0.9", "sparsity.distribution=uniform")
    results = run(cfg, tmp_path)
    assert results["metrics"]["sparsity/global"] == pytest.approx(0.9, abs=1e-3)
    for row in results["layers"]:
        assert abs(row["nonzero"] - 0.1 * row["numel"]) <= 1, row["name"]
    # After training: every pruned position is exactly zero in the deployed weights.
    state = torch.load(tmp_path / "final_model.pt", weights_only=True)
    for row in results["layers"]:
        assert int(torch.count_nonzero(state[row["name"]])) == row["nonzero"]
    assert results["rounds"][0]["sparsity/global"] == pytest.approx(0.9, abs=1e-3)
