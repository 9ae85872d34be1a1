"""Every energy figure is priced by the run's hardware target, with the constants of the target's config."""

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from sparse_lab.cli import CONFIG_DIR
from sparse_lab.errors import UserError
from sparse_lab.experiment import run
from sparse_lab.hardware import load_target
from sparse_lab.hardware.targets import TARGETS


def target(make_cfg, *overrides):
    return TARGETS.from_config(OmegaConf.to_container(make_cfg(*overrides).hardware, resolve=True))


@pytest.mark.parametrize("name", TARGETS.names())
def test_every_built_in_target_has_a_config_naming_its_prices(name):
    path = CONFIG_DIR / "hardware" / f"{name}.yaml"
    config = yaml.safe_load(path.read_text())
    assert config["name"] == name
    assert config["energy_pj_per_mac"] > 0 and config["energy_pj_per_sop"] > 0
    text = path.read_text()
    assert "energy_pj_per_mac:" in text and "#" in text.split("energy_pj_per_mac:")[0]  # a comment before: the source


@pytest.mark.parametrize("name", ["cpu", "ideal", "neuromorphic", "ampere_2to4", "edge_xnnpack"])
def test_prices_are_the_configs(name, make_cfg):
    prices = yaml.safe_load((CONFIG_DIR / "hardware" / f"{name}.yaml").read_text())
    t = target(make_cfg, f"hardware={name}")
    assert t.name == name
    expected = (prices["energy_pj_per_mac"] * 1000 + prices["energy_pj_per_sop"] * 300) * 1e-6
    assert t.energy_uj(1000, 300) == pytest.approx(expected)
    assert t.energy_uj(1000) == pytest.approx(prices["energy_pj_per_mac"] * 1000 * 1e-6)


@pytest.mark.parametrize("name", ["cpu", "ideal", "neuromorphic", "ampere_2to4", "edge_xnnpack"])
def test_a_target_from_its_name_alone_has_its_configs_prices(name, make_cfg):
    from_name, composed = load_target(name), target(make_cfg, f"hardware={name}")
    assert repr(from_name) == repr(composed) and type(from_name) is type(composed)
    assert load_target(name, energy_pj_per_mac=1.5).energy_pj_per_mac == 1.5


def test_unknown_target_names_and_edge_thresholds_are_config_errors(make_cfg):
    with pytest.raises(UserError, match=r"unknown hardware target 'ampere24'.*did you mean 'ampere_2to4'"):
        load_target("ampere24")
    assert load_target("edge_xnnpack").min_sparsity == 0.7
    with pytest.raises(UserError, match=r"hardware.min_sparsity must be in \[0, 1\]"):
        target(make_cfg, "hardware=edge_xnnpack", "hardware.min_sparsity=1.5")
    with pytest.raises(UserError, match=r"edge_xnnpack: its config gives no hardware.min_sparsity"):
        target(make_cfg, "hardware=edge_xnnpack", "~hardware.min_sparsity")


def test_overrides_reach_the_target_and_a_missing_price_is_a_config_error(make_cfg):
    t = target(make_cfg, "hardware=neuromorphic", "hardware.energy_pj_per_mac=10", "hardware.energy_pj_per_sop=2")
    assert t.energy_uj(100, 50) == pytest.approx((10 * 100 + 2 * 50) * 1e-6)
    with pytest.raises(UserError, match=r"neuromorphic: its config gives no hardware.energy_pj_per_sop"):
        target(make_cfg, "hardware=neuromorphic", "~hardware.energy_pj_per_sop")


def test_cpu_target_profile_counts_dense_and_effective(make_cfg):
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    with torch.no_grad():
        model[0].weight[:5] = 0
    cpu = target(make_cfg, "hardware=cpu", "hardware.energy_pj_per_mac=2.0")
    metrics, table = cpu.profile(model, torch.zeros(1, 10))
    assert metrics["macs/dense"] == 100 and metrics["macs/effective"] == 50 and metrics["macs/target"] == 100
    assert metrics["params/total"] == 100 and metrics["params/nonzero"] == 50
    assert metrics["energy/uJ"] == pytest.approx(100 * 2.0e-6)
    assert [row["macs_effective"] for row in table] == [50]
    assert target(make_cfg, "hardware=ideal").profile(model, torch.zeros(1, 10))[0]["macs/target"] == 50


def test_snn_energy_agrees_with_the_target_energy_when_prices_are_overridden(make_cfg, tmp_path):
    # One test cloud: the spike statistics of the test pass and the target's profile (the first test
    # cloud) count the same input, so their energies agree when both use the run's prices.
    mac_pj, sop_pj = 100.0, 7.0
    cfg = make_cfg(
        "model=e3dsnn",
        "hardware=neuromorphic",
        f"hardware.energy_pj_per_mac={mac_pj}",
        f"hardware.energy_pj_per_sop={sop_pj}",
        "data.test_size=1",
    )
    m = run(cfg, tmp_path)["metrics"]
    assert m["snn/sops"] > 0 and m["snn/macs"] > 0 and 0 < m["snn/spike_rate"] < 1
    assert m["snn/energy_uJ"] == pytest.approx((mac_pj * m["snn/macs"] + sop_pj * m["snn/sops"]) * 1e-6, rel=1e-5)
    assert m["energy/uJ"] == pytest.approx((mac_pj * m["macs/target"] + sop_pj * m["sops/target"]) * 1e-6, rel=1e-5)
    assert m["snn/energy_uJ"] == pytest.approx(m["energy/uJ"], rel=1e-5)
    # The names logged before the move are all still there.
    assert {
        "snn/sops_dense",
        "snn/macs_dense",
        "snn/firing_fraction",
        "macs/dense",
        "macs/effective",
        "params/total",
        "activations/spike_mean_zero_fraction",
    } <= set(m)
    assert any(key.startswith("snn/spike_rate/") for key in m)


# -- run-level: what a trained model costs on the target it names ---------------------------------------
def test_2to4_training_halves_the_macs_of_its_layers_on_ampere(make_cfg, tmp_path):
    result = run(make_cfg("hardware=ampere_2to4", "sparsity=nm24"), tmp_path)
    m, rows = result["metrics"], result["macs_by_layer"]
    sparsified = set(result["sparsity"]["sparsified_layers"])  # nm applies its final masks at fit end
    halved = [r["macs_dense"] for r in rows if f"{r['name']}.weight" in sparsified]
    assert len(halved) == len(sparsified) > 0
    assert m["macs/target"] == m["macs/dense"] - sum(macs // 2 for macs in halved)


def test_fast_sparse_convnets_run_fewer_macs_on_xnnpack(make_cfg, tmp_path):
    result = run(make_cfg("experiment=fast_sparse_convnets", "hardware=edge_xnnpack"), tmp_path)
    m = result["metrics"]
    assert result["config"]["hardware"]["name"] == "edge_xnnpack"
    assert m["macs/target"] < m["macs/dense"]
    # Only the 1x1 convolutions are pruned, each to 90% (>= min_sparsity): XNNPACK skips all their zeros.
    assert m["macs/target"] == m["macs/effective"]


def test_unstructured_sparsity_runs_dense_on_ampere(make_cfg, tmp_path):
    m = run(make_cfg("sparsity=random", "hardware=ampere_2to4"), tmp_path)["metrics"]
    assert m["macs/effective"] < m["macs/dense"] and m["macs/target"] == m["macs/dense"]
