"""Each target's cost model: the MACs it executes per counted layer, and in total on hand-built models.

The models have no padding, so every layer's effective MACs are exactly its dense MACs times its weight
density, and every expected count below is computed by hand.
"""

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from sparse_lab.hardware import TARGETS, count_macs, load_target
from sparse_lab.hardware.ampere import holds_nm
from sparse_lab.sparsity.nm import nm_mask

# cuda's cost model is cpu's (dense); building it needs a GPU.
BUILT_IN = [name for name in TARGETS.names() if name != "cuda" or torch.cuda.is_available()]


@dataclass
class Row:
    """The fields of a ``LayerMacs`` row that cost models read."""

    name: str
    kind: str
    dense: int
    effective: int
    module: nn.Module
    weight: torch.Tensor | None


def row(module: nn.Module, dense: int, kind: str) -> Row:
    nonzero, numel = int(torch.count_nonzero(module.weight)), module.weight.numel()
    assert dense * nonzero % numel == 0, "pick sizes that make effective MACs an integer"
    return Row("layer", kind, dense, dense * nonzero // numel, module, module.weight)


def keep_first(module: nn.Module, kept: int) -> nn.Module:
    """Unstructured zeros: all but the first ``kept`` weights (row-major) set to zero."""
    with torch.no_grad():
        module.weight.view(-1)[kept:] = 0
    return module


def keep_nm(module: nn.Module, n: int, m: int) -> nn.Module:
    with torch.no_grad():
        module.weight.mul_(nm_mask(module.weight, n, m))
    return module


def convnet(width: int = 16) -> nn.Sequential:
    """x [1, 8, 6, 6] -> 3x3 conv (no padding) -> 1x1 conv -> global pool -> linear. Dense MACs:
    conv3 width*4*4 * 8*9, conv1 width*4*4 * width, fc 8 * width (22656 in all at width 16)."""
    torch.manual_seed(0)
    layers = OrderedDict(
        conv3=nn.Conv2d(8, width, 3, bias=False),
        conv1=nn.Conv2d(width, width, 1, bias=False),
        pool=nn.AdaptiveAvgPool2d(1),
        flat=nn.Flatten(),
        fc=nn.Linear(width, 8, bias=False),
    )
    return nn.Sequential(layers)


X = torch.randn(1, 8, 6, 6, generator=torch.Generator().manual_seed(1))
CONV3, CONV1, FC = 256 * 72, 256 * 16, 8 * 16  # dense MACs of convnet() at width 16
DENSE = CONV3 + CONV1 + FC  # 22656


# -- the rule of each target on one layer ---------------------------------------------------------------
def test_2to4_layers_execute_half_whatever_n_and_unstructured_zeros_dense():
    ampere = load_target("ampere_2to4")
    linear = lambda: nn.Linear(16, 8, bias=False)  # noqa: E731  dense MACs per token: 128
    assert ampere.executed_macs(row(keep_nm(linear(), 2, 4), 128, "linear")) == 64
    assert ampere.executed_macs(row(keep_nm(linear(), 1, 4), 128, "linear")) == 64  # 1:4 runs as 2:4
    assert ampere.executed_macs(row(keep_nm(linear(), 2, 8), 128, "linear")) == 64  # 2:8 holds 2:4
    assert ampere.executed_macs(row(keep_nm(linear(), 4, 8), 128, "linear")) == 128  # 4:8 does not
    conv = keep_nm(nn.Conv2d(8, 4, 3, bias=False), 2, 4)
    assert ampere.executed_macs(row(conv, 4 * 16 * 72, "conv")) == 4 * 16 * 72 // 2
    # Depthwise: one input channel per group, no group of 4 to compress.
    depthwise = keep_first(nn.Conv2d(8, 8, 3, groups=8, bias=False), 36)
    assert ampere.executed_macs(row(depthwise, 8 * 16 * 9, "conv")) == 8 * 16 * 9
    # A transposed convolution's weight is [C_in, C_out, ...]: no 2:4 kernel claimed, dense.
    transposed = keep_nm(nn.ConvTranspose2d(8, 4, 3, bias=False), 2, 4)
    assert ampere.executed_macs(row(transposed, 4 * 64 * 72, "conv")) == 4 * 64 * 72
    # A 2:4 weight on a layer kind without sparse kernels (spconv) stays dense.
    assert ampere.executed_macs(row(keep_nm(linear(), 2, 4), 128, "sparse_conv")) == 128
    # Attention matmuls between activations have no weight.
    assert ampere.executed_macs(Row("attn", "attention", 500, 500, nn.Identity(), None)) == 500


def test_2to4_is_read_along_the_input_channels():
    # Two of every four consecutive *output* channels dense: 2:4 along outputs, not along inputs.
    layer = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        layer.weight[torch.arange(8) % 4 >= 2] = 0
    assert holds_nm(layer.weight, 2, 4, input_dim=0) and not holds_nm(layer.weight, 2, 4, input_dim=1)
    assert load_target("ampere_2to4").executed_macs(row(layer, 128, "linear")) == 128


def test_unstructured_random_zeros_run_dense_on_ampere():
    layer = nn.Linear(64, 32, bias=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.weight.view(-1)[torch.randperm(2048, generator=generator)[:1024]] = 0  # exactly 50%
    assert not holds_nm(layer.weight, 2, 4)
    assert load_target("ampere_2to4").executed_macs(row(layer, 2048, "linear")) == 2048


def test_xnnpack_skips_zeros_of_sparse_enough_1x1_convolutions_only():
    edge = load_target("edge_xnnpack")
    pointwise = keep_first(nn.Conv2d(16, 16, 1, bias=False), 25)  # 90.2% sparse
    assert edge.executed_macs(row(pointwise, 256 * 16, "conv")) == 16 * 25  # effective
    half = keep_first(nn.Conv2d(16, 16, 1, bias=False), 128)  # 50%: below the useful range
    assert edge.executed_macs(row(half, 256 * 16, "conv")) == 256 * 16
    conv3 = keep_first(nn.Conv2d(8, 16, 3, bias=False), 144)  # 87.5%, but 3x3
    assert edge.executed_macs(row(conv3, 256 * 72, "conv")) == 256 * 72
    strided = keep_first(nn.Conv2d(16, 16, 1, stride=2, bias=False), 32)  # XNNPACK: stride-1 only
    assert edge.executed_macs(row(strided, 64 * 16, "conv")) == 64 * 16
    fc = keep_first(nn.Linear(16, 8, bias=False), 8)  # fully connected: dense kernels
    assert edge.executed_macs(row(fc, 128, "linear")) == 128
    # The threshold is the config's: lowered to 50%, the half-sparse layer runs sparse.
    assert load_target("edge_xnnpack", min_sparsity=0.5).executed_macs(row(half, 256 * 16, "conv")) == 16 * 128


def test_neuromorphic_layers_reading_spikes_execute_no_mac():
    reader = keep_first(nn.Linear(16, 8, bias=False), 64)
    reader.spike_input = True
    encoder = keep_first(nn.Linear(16, 8, bias=False), 64)
    neuromorphic = load_target("neuromorphic")
    assert neuromorphic.executed_macs(row(reader, 128, "linear")) == 0
    assert neuromorphic.executed_macs(row(encoder, 128, "linear")) == 64


# -- macs/target of whole models ------------------------------------------------------------------------
def mixed() -> nn.Sequential:
    """conv3 and fc 2:4, conv1 90% unstructured."""
    model = convnet()
    keep_nm(model.conv3, 2, 4)
    keep_first(model.conv1, 25)
    keep_nm(model.fc, 2, 4)
    return model


MIXED_EXPECTED = {  # every target's macs/target of mixed()
    "cpu": DENSE,
    "cuda": DENSE,
    "ideal": CONV3 // 2 + 16 * 25 + FC // 2,  # every zero skipped
    "neuromorphic": CONV3 // 2 + 16 * 25 + FC // 2,  # no spiking layer: every layer's effective MACs
    "ampere_2to4": DENSE - CONV3 // 2 - FC // 2,  # the 2:4 layers at half, the unstructured 1x1 dense
    "edge_xnnpack": CONV3 + 16 * 25 + FC,  # only the 90%-sparse 1x1 conv skips zeros
}


@pytest.mark.parametrize("name", BUILT_IN)
def test_macs_on_each_target_of_a_masked_model(name):
    count = count_macs(mixed(), X, target=name)
    assert count.dense == DENSE
    assert count.effective == CONV3 // 2 + 16 * 25 + FC // 2
    assert count.target == MIXED_EXPECTED[name]


@pytest.mark.parametrize("name", BUILT_IN)
def test_narrowed_channels_cost_fewer_macs_on_every_target(name):
    wide, narrow = convnet(16), convnet(8)
    assert count_macs(wide, X, target=name).target == DENSE
    assert count_macs(narrow, X, target=name).target == 128 * 72 + 128 * 8 + 8 * 8 < DENSE


def test_profile_reports_the_target_macs_and_their_energy():
    ampere = load_target("ampere_2to4")
    metrics, table = ampere.profile(mixed(), X)
    assert metrics["macs/dense"] == DENSE and metrics["macs/target"] == DENSE - CONV3 // 2 - FC // 2
    assert metrics["energy/uJ"] == pytest.approx(metrics["macs/target"] * ampere.energy_pj_per_mac * 1e-6)
    assert len(table) == 3
    edge = load_target("edge_xnnpack")
    assert edge.profile(mixed(), X)[0]["macs/target"] == CONV3 + 16 * 25 + FC


class Heaviside(nn.Module):
    """A spiking neuron: one spike where the input is positive."""

    activation_kind = "spikes"

    def activation_zeros(self, inputs, output):
        return int((output == 0).sum()), output.numel()

    def forward(self, x):
        return (x > 0).float()


def spiking_net() -> nn.Sequential:
    """encoder Linear(4, 8) on real values (16 of 32 weights nonzero) -> spikes (5 of 8 neurons fire on
    ones(1, 4)) -> Linear(8, 3) reading spikes, output 0 pruned (each spike reaches 2 neurons)."""
    model = nn.Sequential(
        OrderedDict(enc=nn.Linear(4, 8, bias=False), spike=Heaviside(), fc=nn.Linear(8, 3, bias=False))
    )
    with torch.no_grad():
        model.enc.weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 5 + [[-1.0, -1.0, 0.0, 0.0]] * 3))
        model.fc.weight.fill_(0.5)
        model.fc.weight[0] = 0
    model.fc.spike_input = True
    return model


def test_spiking_layers_cost_sops_on_neuromorphic():
    x = torch.ones(1, 4)
    count = count_macs(spiking_net(), x, target="neuromorphic")
    assert count.dense == 32 + 24 and count.target == 16  # the encoder's effective MACs only
    assert count_macs(spiking_net(), x, target="cpu").target == 32 + 24
    neuromorphic = load_target("neuromorphic")
    metrics, _ = neuromorphic.profile(spiking_net(), x)
    assert metrics["macs/target"] == 16 and metrics["sops/target"] == 5 * 2
    expected = (16 * neuromorphic.energy_pj_per_mac + 10 * neuromorphic.energy_pj_per_sop) * 1e-6
    assert metrics["energy/uJ"] == pytest.approx(expected)
