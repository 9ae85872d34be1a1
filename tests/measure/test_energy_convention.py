"""Energy conventions of spiking models: the project counts MACs (pairs x C_in x C_out for a sparse conv)
and SOPs; ``hardware.op_count=paper_flops`` counts as E-3DSNN's energy script does (energy_calculate.py:
2 x pairs x C_in x C_out - N_out FLOPs per sparse conv, SOPs as firing rate x FLOPs)."""

from collections import OrderedDict

import pytest
import spconv.pytorch as sp
import torch
from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.hardware.lookup import load_target
from sparse_lab.measure import SpikeCounter, SpikeStats
from sparse_lab.measure.sops import priced_counts
from sparse_lab.measure.sparse_conv import pair_mask, paper_flops, sparse_conv_counts
from sparse_lab.spconv_compat import spconv  # noqa: F401
from sparse_lab.spconv_layout import output_channel_dim


def tensor(coords, feats=None, cin=2):
    coords = torch.tensor(coords, dtype=torch.int32)
    feats = torch.ones(len(coords), cin) if feats is None else feats
    return sp.SparseConvTensor(feats, coords, [4, 4, 4], 1)


# Three voxels: a and b face-adjacent, c isolated. Submanifold 3x3x3: a<-a, a<-b, b<-b, b<-a, c<-c = 5
# pairs; 3 output sites (N_out, the reference's pair_fwd.shape[1]).
SITES = [[0, 0, 0, 0], [0, 0, 0, 1], [0, 3, 3, 3]]


class Spike(nn.Module):
    activation_kind = "spikes"  # protocols.ActivationReport

    def forward(self, u):
        return (u > 0).float()

    def activation_zeros(self, inputs, output):
        return int((output == 0).sum()), output.numel()


class SparseSNN(nn.Module):
    """enc: SubMConv3d(2 -> 3) on real values (MACs); spike; conv: SubMConv3d(3 -> 4) reading spikes (SOPs)."""

    def __init__(self):
        super().__init__()
        self.enc = sp.SubMConv3d(2, 3, 3, padding=1, bias=False, indice_key="s")
        self.spike = Spike()
        self.conv = sp.SubMConv3d(3, 4, 3, padding=1, bias=False, indice_key="s")
        self.conv.spike_input = True  # protocols.SpikeInput
        with torch.no_grad():
            self.enc.weight.fill_(1.0)
            self.enc.weight.index_fill_(output_channel_dim(self.enc), torch.tensor([2]), -1.0)  # channel 2 never fires
            self.conv.weight.fill_(1.0)

    def forward(self, x):
        x = self.enc(x)
        return self.conv(x.replace_feature(self.spike(x.features))).features.sum(0, keepdim=True)


def test_paper_convention_is_twice_the_macs_minus_the_output_sites():
    x = tensor(SITES)
    conv = sp.SubMConv3d(2, 3, 3, padding=1, bias=False)
    out = conv(x)
    pairs = int(pair_mask(conv, x, out).sum())
    assert pairs == 5 and out.indices.shape[0] == 3
    dense, effective, dense_flops, effective_flops = sparse_conv_counts(conv, x, out, spikes=False)
    assert dense == effective == pairs * 2 * 3 == 30
    assert dense_flops == effective_flops == 2 * pairs * 2 * 3 - 3 == paper_flops(30, 3) == 57


def test_counter_reports_both_conventions_and_prices_the_chosen_one():
    model = SparseSNN()
    with torch.no_grad(), SpikeCounter(model) as counter:
        model(tensor(SITES))
    t = counter.totals()
    assert t["snn/macs"] == 30 and t["snn/mac_flops"] == 2 * 30 - 3  # the encoder: 5 pairs x 2 x 3
    # conv: 5 pairs, 2 of 3 input channels spike (value 1) -> 5 x 2 x 4 = 40 SOPs of 60 MACs; firing
    # rate 2/3, so the paper counts 2/3 x (2 x 60 - 3) = 78.
    assert t["snn/sops"] == 40 and t["snn/sop_flops"] == pytest.approx(2 / 3 * (2 * 60 - 3))
    assert priced_counts(t) == (30, 40)  # default: MACs and SOPs
    assert priced_counts(t, "paper_flops") == (57, pytest.approx(78))
    with pytest.raises(UserError, match="op_count"):
        priced_counts(t, "flops")


def test_neuromorphic_default_is_unchanged_and_paper_flops_is_an_option():
    x = tensor(SITES)
    default = load_target("neuromorphic")
    assert default.op_count == "macs"
    metrics, _ = default.profile(SparseSNN(), x)
    assert metrics["energy/convention"] == "macs"
    assert metrics["macs/target"] == 30 and metrics["sops/target"] == 40
    assert metrics["energy/uJ"] == pytest.approx((4.6 * 30 + 0.9 * 40) * 1e-6)
    assert (metrics["energy/mac_ops"], metrics["energy/sop_ops"]) == (30, 40)

    paper = load_target("neuromorphic", op_count="paper_flops")
    metrics, _ = paper.profile(SparseSNN(), x)
    assert metrics["energy/convention"] == "paper_flops"
    assert metrics["macs/target"] == 30 and metrics["sops/target"] == 40  # counts stay MACs and SOPs
    assert metrics["energy/uJ"] == pytest.approx((4.6 * 57 + 0.9 * 78) * 1e-6)
    with pytest.raises(UserError, match="op_count"):
        load_target("neuromorphic", op_count="flops")


def test_every_target_names_its_convention():
    metrics, _ = load_target("cpu").profile(nn.Linear(4, 2), torch.ones(1, 4))
    assert metrics["energy/convention"] == "macs"


def test_spike_stats_price_in_the_targets_convention():
    paper = load_target("neuromorphic", op_count="paper_flops")
    assert SpikeStats(paper.energy_uj).op_count == "paper_flops"
    assert SpikeStats(load_target("neuromorphic").energy_uj).op_count == "macs"
    assert SpikeStats(lambda macs, sops: 0.0).op_count == "macs"


def test_dense_layers_count_two_flops_per_mac():
    model = nn.Sequential(OrderedDict(enc=nn.Linear(4, 3, bias=False)))
    with torch.no_grad(), SpikeCounter(model) as counter:
        model(torch.ones(2, 4))
    t = counter.totals()
    assert t["snn/macs"] == 12 and t["snn/mac_flops"] == 24
