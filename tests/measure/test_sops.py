"""Spike statistics on a hand-computable spiking network: SOPs, MACs, and energy priced by the caller."""

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparse_lab.measure import SpikeCounter, SpikeStats
from sparse_lab.tasks.classification import ClassificationTask


class Threshold(nn.Module):
    activation_kind = "spikes"  # protocols.ActivationReport

    def forward(self, u):
        return (u > 0).float()

    def activation_zeros(self, inputs, output):
        return int((output == 0).sum()), output.numel()


class TinySNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 3, bias=False)  # reads real values: MACs
        self.spike = Threshold()
        self.fc = nn.Linear(3, 2, bias=False)
        self.fc.spike_input = True  # protocols.SpikeInput: SOPs
        with torch.no_grad():
            self.enc.weight.copy_(torch.eye(3, 4))  # 3 of 12 weights nonzero
            self.fc.weight.fill_(1.0)
            self.fc.weight[0, 0] = 0.0  # input 0 reaches one neuron, inputs 1 and 2 reach two

    def forward(self, x):
        return self.fc(self.spike(self.enc(x)))


X = torch.tensor([[1.0, -1.0, 1.0, 0.0]]).repeat(4, 1)  # spikes [1, 0, 1] for every sample


def test_counter_counts_sops_by_fan_out_and_macs_by_nonzero_weights():
    model = TinySNN()
    with torch.no_grad(), SpikeCounter(model) as counter:
        model(X)
    totals = counter.totals()
    assert counter.samples == 4
    assert (totals["snn/sops_dense"], totals["snn/sops"]) == (2 * 2, 1 * 1 + 1 * 2)
    assert (totals["snn/macs_dense"], totals["snn/macs"]) == (12, 3)
    assert totals["snn/spike_rate"] == pytest.approx(2 / 3)


def run_test(model, callback, tmp_path) -> dict:
    task = ClassificationTask(model, num_classes=2, optimizer={"name": "sgd", "lr": 0.1}, schedule="constant")
    data = DataLoader(TensorDataset(X, torch.zeros(4, dtype=torch.long)), batch_size=2)
    trainer = pl.Trainer(
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return trainer.test(task, data, verbose=False)[0]


def test_callback_logs_energy_at_the_prices_it_is_given(tmp_path):
    metrics = run_test(TinySNN(), SpikeStats(lambda macs, sops: 10 * macs + 1000 * sops), tmp_path)
    assert metrics["snn/sops"] == 3 and metrics["snn/macs"] == 3
    assert metrics["snn/energy_uJ"] == pytest.approx(10 * 3 + 1000 * 3)
    assert metrics["snn/spike_rate/spike"] == pytest.approx(2 / 3)


def test_callback_logs_nothing_for_a_model_without_spikes_and_leaves_no_hooks(tmp_path):
    model = nn.Linear(4, 2)
    assert not any(key.startswith("snn/") for key in run_test(model, SpikeStats(lambda macs, sops: 0.0), tmp_path))

    class Failing(TinySNN):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    failing = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        run_test(failing, SpikeStats(lambda macs, sops: 0.0), tmp_path)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in failing.modules()) == 0
