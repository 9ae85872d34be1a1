import math

import pytest
import torch

from sparse_lab.tasks.scene_flow import SceneFlowMetrics, flow_errors

# Four hand-made points: (ground-truth flow, prediction) and what each metric must say about them.
#   EPE   relative  strict (<.05|<5%)  relax (<.1|<10%)  outlier (>.3|>10%)
#   0.04  0.04      yes                yes               no
#   0.08  0.04      yes (relative)     yes               no
#   0.20  0.20      no                 no                yes (relative)
#   0.40  0.08      no                 yes (relative)    yes (EPE)
TARGET = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0], [0, 0, 5.0]])
PRED = torch.tensor([[1.04, 0, 0], [2.0, 0.08, 0], [0, 1.2, 0], [0, 0, 5.4]])


def test_per_point_errors_match_hand_values():
    e = flow_errors(PRED, TARGET)
    assert torch.allclose(e["epe3d"], torch.tensor([0.04, 0.08, 0.2, 0.4]), atol=1e-6)
    assert e["acc3d_strict"].tolist() == [1, 1, 0, 0]
    assert e["acc3d_relax"].tolist() == [1, 1, 0, 1]
    assert e["outliers"].tolist() == [0, 0, 1, 1]


def test_metrics_over_batches_equal_the_point_average():
    metric = SceneFlowMetrics()
    metric.update(PRED[:2].unsqueeze(0), TARGET[:2].unsqueeze(0))  # [B=1, N=2, 3]
    metric.update(PRED[2:].unsqueeze(0), TARGET[2:].unsqueeze(0))
    values = {k: float(v) for k, v in metric.compute().items()}
    assert values["epe3d"] == pytest.approx(0.18, abs=1e-6)  # (0.04 + 0.08 + 0.2 + 0.4) / 4
    assert values["acc3d_strict"] == pytest.approx(0.5)
    assert values["acc3d_relax"] == pytest.approx(0.75)
    assert values["outliers"] == pytest.approx(0.5)


def test_zero_flow_baseline_epe_is_the_mean_flow_norm():
    metric = SceneFlowMetrics()
    metric.update(torch.zeros_like(TARGET), TARGET)
    assert float(metric.compute()["epe3d"]) == pytest.approx((1 + 2 + 1 + 5) / 4)
    # A nearly static point guessed as static: accurate by EPE (< 0.05 m), yet an outlier by the relative
    # rule (0.001 / (0.001 + 1e-4) > 10%), exactly as the HPLFlowNet/FLOT definitions say.
    still = SceneFlowMetrics()
    still.update(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 0.001]]))
    assert float(still.compute()["acc3d_strict"]) == 1.0 and math.isclose(float(still.compute()["outliers"]), 1.0)
