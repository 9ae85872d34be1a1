import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparse_lab.measure import ActivationMonitor, ActivationSparsity
from sparse_lab.models.delta import DeltaActivation
from sparse_lab.tasks.classification import ClassificationTask


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()
        self.gelu = nn.GELU()
        self.delta = DeltaActivation(step=1.0, time_dim=1)
        self.head = nn.Linear(2, 2)

    def forward(self, x):  # x: [B, T=2, 2]
        return self.head(self.delta(self.relu(x)) + self.gelu(x)).mean(dim=1)


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_monitor_counts_zeros_per_layer_and_removes_its_hooks():
    net = Net()
    x = torch.tensor([[[-1.0, 2.0], [-3.0, 2.0]]])  # relu: 2 of 4 zero; gelu(-3)=-0.004 <= 0.01: 1 of 4
    with ActivationMonitor(net) as monitor:
        assert hooks(net) == 3
        net(x)
        net(x)
    assert hooks(net) == 0
    rows = {r["name"]: r for r in monitor.table()}
    assert set(rows) == {"relu", "gelu", "delta"}
    assert (rows["relu"]["zeros"], rows["relu"]["total"]) == (4, 8)
    assert rows["gelu"]["zero_fraction"] == pytest.approx(0.25)
    # deltas: frame 1 = Q(relu) = [0, 2]; frame 2 = [0, 0]: 3 of 4 zero, a temporal layer.
    assert rows["delta"]["kind"] == "temporal" and rows["delta"]["zero_fraction"] == pytest.approx(0.75)
    summary = monitor.summary()
    assert summary["activations/mean_zero_fraction"] == pytest.approx((0.5 + 0.25) / 2)
    assert summary["activations/temporal_mean_zero_fraction"] == pytest.approx(0.75)
    net(x)  # hooks are gone: counts stay
    assert monitor.table()[0]["total"] == 8


def test_callback_measures_during_test_only_and_leaves_no_hooks(tmp_path):
    torch.manual_seed(0)
    net = Net()
    task = ClassificationTask(net, num_classes=2, optimizer={"name": "adamw", "lr": 1e-3}, schedule="constant")
    data = DataLoader(TensorDataset(torch.randn(12, 2, 2), torch.randint(0, 2, (12,))), batch_size=4)
    callback = ActivationSparsity()
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, data)
    assert callback.summary() == {} and hooks(net) == 0
    trainer.test(task, data, verbose=False)
    assert hooks(net) == 0
    rows = {r["name"]: r for r in callback.table()}
    assert rows["relu"]["total"] == 12 * 2 * 2  # every test element, once
    assert 0 < callback.summary()["activations/mean_zero_fraction"] < 1


def test_a_failing_test_pass_leaves_no_hooks(tmp_path):
    class Failing(Net):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    net = Failing()
    task = ClassificationTask(net, num_classes=2, optimizer={"name": "adamw", "lr": 1e-3}, schedule="constant")
    data = DataLoader(TensorDataset(torch.randn(4, 2, 2), torch.randint(0, 2, (4,))), batch_size=4)
    trainer = pl.Trainer(
        callbacks=[ActivationSparsity()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(RuntimeError, match="boom"):
        trainer.test(task, data, verbose=False)
    assert hooks(net) == 0
