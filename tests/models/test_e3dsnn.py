"""E-3DSNN: integer spiking neuron, paper-size preset, training step, spike/SOP accounting, config wiring,
and its ANN twin (``model.spiking=false``)."""

import csv
import math

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from sparse_lab.cli import CONFIG_DIR
from sparse_lab.data.points import voxelize
from sparse_lab.errors import UserError
from sparse_lab.experiment import run
from sparse_lab.hardware.lookup import load_target
from sparse_lab.measure import SpikeCounter, count_macs, has_spiking_layers
from sparse_lab.measure.activations import ActivationMonitor
from sparse_lab.models import build_model
from sparse_lab.models.e3dsnn import ClippedReLU, IntegerLIF


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


# -- the ANN twin (model.spiking=false): same layers and parameters, clipped-ReLU neurons, all MACs ----------
def twin_pair(**overrides):
    """An SNN and its ANN twin built from one seed, with every BN's β at 1 (so that the SNN fires in eval
    mode) and half the output channels of one residual conv zeroed (effective MACs below dense)."""
    pair = []
    for spiking in (True, False):
        torch.manual_seed(0)
        model = build_model(
            "e3dsnn",
            modality="point_cloud",
            num_classes=5,
            in_chans=4,
            grid_size=16,
            embed_dim=8,
            channels=[8, 16],
            depths=[1, 1],
            spiking=spiking,
            **overrides,
        )
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.bias.fill_(1.0)
            model.stages[0][1].unit2.conv.weight[:4] = 0  # half its weights (either storage order)
        pair.append(model.eval())
    return pair


def test_ann_twin_has_the_snn_parameters_and_macs():
    snn, ann = twin_pair()
    assert sum(p.numel() for p in snn.parameters()) == sum(p.numel() for p in ann.parameters())
    a, b = snn.state_dict(), ann.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for batch in (1, 3):
        x = tiny_batch(batch=batch)
        snn_macs, ann_macs = count_macs(snn, x), count_macs(ann, x)
        assert snn_macs.dense == ann_macs.dense > 0
        assert snn_macs.effective == ann_macs.effective < ann_macs.dense
        assert [r["name"] for r in snn_macs.table()] == [r["name"] for r in ann_macs.table()]


def test_ann_twin_has_no_spiking_neurons_and_real_valued_activations():
    snn, ann = twin_pair()
    assert has_spiking_layers(snn) and not has_spiking_layers(ann)
    assert not any(isinstance(m, IntegerLIF) for m in ann.modules())
    assert not any(getattr(m, "spike_input", False) for m in ann.modules())
    neurons = [m for m in ann.modules() if isinstance(m, ClippedReLU)]
    assert len(neurons) == 2 + 2 * 4 + 1  # where the SNN has its spiking neurons
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o)) for m in neurons]
    x = tiny_batch()
    with torch.no_grad(), ActivationMonitor(ann) as monitor, SpikeCounter(ann) as counter:
        ann(x)
    for h in hooks:
        h.remove()
    values = torch.cat([o.flatten() for o in outputs])
    assert values.min() >= 0 and values.max() <= 4
    assert (values != values.round()).float().mean() > 0.5  # real-valued, not spike counts
    summary = monitor.summary()
    assert 0 < summary["activations/mean_zero_fraction"] < 1 and summary["activations/layers"] == len(neurons)
    assert not any(key.startswith("activations/spike_") for key in summary)
    totals = counter.totals()  # no neuron, no layer reading spikes: every synapse is a MAC
    assert counter.neurons == {} and totals["snn/sops"] == totals["snn/sops_dense"] == 0
    assert totals["snn/spike_rate"] == 0 and {s.kind for s in counter.synapses.values()} == {"macs"}


def test_ann_twin_costs_only_macs_on_neuromorphic_and_the_snn_also_sops():
    price = yaml.safe_load((CONFIG_DIR / "hardware" / "neuromorphic.yaml").read_text())
    mac_pj, sop_pj = price["energy_pj_per_mac"], price["energy_pj_per_sop"]
    target = load_target("neuromorphic")
    snn, ann = twin_pair()
    x = tiny_batch(batch=1)  # a run profiles one sample
    s, _ = target.profile(snn, x)
    a, _ = target.profile(ann, x)
    effective = count_macs(ann, x).effective  # every layer skips its zero weights
    assert a["macs/dense"] == s["macs/dense"] and a["macs/effective"] == s["macs/effective"] == effective
    assert a["sops/target"] == 0 and a["energy/sop_ops"] == 0 and a["macs/target"] == effective
    assert a["energy/uJ"] == pytest.approx(mac_pj * effective * 1e-6, rel=1e-6)
    # The SNN: MACs only in the encoding conv and the head, the rest SOPs; cheaper than its twin here.
    assert 0 < s["macs/target"] < effective and s["sops/target"] > 0
    assert s["energy/uJ"] == pytest.approx((mac_pj * s["macs/target"] + sop_pj * s["sops/target"]) * 1e-6, rel=1e-6)
    assert s["energy/uJ"] < a["energy/uJ"]


def test_ann_twin_trains_through_a_run_on_neuromorphic(make_cfg, tmp_path):
    cfg = make_cfg("model=e3dsnn", "model.spiking=false", "hardware=neuromorphic", "logger=csv", "data.test_size=16")
    result = run(cfg, tmp_path)
    m = result["metrics"]
    assert result["status"] == "completed" and math.isfinite(m["test/loss"])
    (metrics_csv,) = tmp_path.rglob("metrics.csv")
    losses = [float(row["train/loss"]) for row in csv.DictReader(metrics_csv.open()) if row.get("train/loss")]
    assert len(losses) >= 4 and all(math.isfinite(v) for v in losses)
    assert not any(key.startswith("snn/") for key in m)  # no spiking layer: no spike statistics
    assert "activations/mean_zero_fraction" in m and "activations/spike_mean_zero_fraction" not in m
    assert m["sops/target"] == 0 and m["macs/target"] == m["macs/effective"] < m["macs/dense"]  # random 80%
    assert m["energy/uJ"] == pytest.approx(4.6e-6 * m["macs/effective"], rel=1e-6)


def test_spiking_must_be_a_boolean():
    with pytest.raises(UserError, match="model.spiking"):
        build_model("e3dsnn", modality="point_cloud", num_classes=5, in_chans=4, grid_size=16, spiking="false")
