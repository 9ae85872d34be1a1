"""E-3DSNN: integer spiking neuron, paper-size preset, training step, spike/SOP accounting, config wiring."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from sparse_lab.cli import CONFIG_DIR
from sparse_lab.data.points import voxelize
from sparse_lab.errors import UserError
from sparse_lab.measure import SpikeCounter
from sparse_lab.models import build_model
from sparse_lab.models.e3dsnn import IntegerLIF


def test_integer_neuron_values_and_straight_through_gradient():
    u = torch.tensor([-1.0, 0.0, 0.2, 0.49, 0.5, 1.4, 2.5, 3.4, 3.6, 4.0, 7.0], requires_grad=True)
    s = IntegerLIF(levels=4)(u)
    assert s.tolist() == [0, 0, 0, 0, 1, 1, 3, 3, 4, 4, 4]  # floor(clip(u, 0, 4) + 0.5)
    s.backward(torch.arange(1.0, 12.0))
    assert u.grad.tolist() == [0, 0, 3, 4, 5, 6, 7, 8, 9, 0, 0]  # passed through only where 0 < u < 4


def test_paper_preset_has_1_87m_parameters():
    model = build_model("e3dsnn", modality="point_cloud", num_classes=40, in_chans=4, grid_size=40, preset="paper_t")
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 1.87e6) <= 0.05 * 1.87e6, n


def tiny_model():
    return build_model(
        "e3dsnn",
        modality="point_cloud",
        num_classes=5,
        in_chans=4,
        grid_size=16,
        embed_dim=8,
        channels=[8, 16],
        depths=[1, 1],
    )


def tiny_batch(batch=3, points=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return voxelize(torch.rand(batch, points, 3, generator=g) * 1.6 - 0.8, voxel_size=0.125)  # 16^3


def test_trains_and_evaluates_on_cpu():
    torch.manual_seed(0)
    model = tiny_model()
    x, y = tiny_batch(), torch.tensor([0, 1, 2])
    logits = model(x)
    assert logits.shape == (3, 5)
    torch.nn.functional.cross_entropy(logits, y).backward()
    convs = [m for m in model.modules() if type(m).__module__.startswith("spconv.")]
    assert len(convs) == 3 + 2 * 4 and all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_spike_counter_reports_rates_and_sops():
    torch.manual_seed(0)
    model = tiny_model()
    x = tiny_batch()  # train mode: BatchNorm normalises by the batch, so the neurons fire at init
    with torch.no_grad(), SpikeCounter(model) as counter:
        model(x)
    totals = counter.totals()
    assert counter.samples == 3
    rates = [c.spikes / c.neurons for c in counter.neurons.values()]
    assert len(rates) == 2 + 2 * 4 + 1 and totals["snn/spike_rate"] > 0
    # only the encoding conv and the classifier cost MACs; the first is pairs x 4 x 8 per sample
    macs_layers = {s.name for s in counter.synapses.values() if s.kind == "macs"}
    assert macs_layers == {"stem.0.conv", "head"}
    assert 0 < totals["snn/sops"] <= totals["snn/sops_dense"]
    assert 0 < totals["snn/macs"] <= totals["snn/macs_dense"]
    assert "snn/energy_uJ" not in totals  # counts only: the hardware target prices them (tests/measure/test_energy.py)


def test_wrong_modality_names_a_dataset():
    with pytest.raises(UserError, match="data=shapes3d"):
        build_model("e3dsnn", modality="image", num_classes=10, image_size=32, in_chans=3)


def test_model_config_picks_shapes3d_and_the_command_line_wins():
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        assert compose("config", overrides=["model=e3dsnn"]).data.name == "shapes3d"
        assert compose("config", overrides=["model=e3dsnn", "data=modelnet40"]).data.name == "modelnet40"
        assert compose("config", overrides=["model=vit"]).data.name == "digits"
