"""Sparse convolutions are counted by active input-output pairs: MACs = pairs x C_in x C_out."""

import spconv.pytorch as sp
import torch
import torch.nn.functional as F

from sparse_lab.measure import count_macs
from sparse_lab.measure.sparse_conv import pair_mask, sparse_conv_sops
from sparse_lab.spconv_compat import spconv  # noqa: F401


def tensor(coords, feats=None, shape=(4, 4, 4), batch=1, cin=2):
    coords = torch.tensor(coords, dtype=torch.int32)
    feats = torch.ones(len(coords), cin) if feats is None else feats
    return sp.SparseConvTensor(feats, coords, list(shape), batch)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.subm = sp.SubMConv3d(2, 3, 3, padding=1, bias=False)
        self.down = sp.SparseConv3d(3, 5, 2, stride=2, bias=False)

    def forward(self, x):
        return self.down(self.subm(x))


def test_hand_built_case():
    # Three voxels of one cloud: a and b face-adjacent, c isolated.
    #   submanifold 3x3x3: a<-a, a<-b, b<-b, b<-a, c<-c               -> 5 pairs
    #   2x2x2 stride 2: every input lands in exactly one output cell  -> 3 pairs
    x = tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 3, 3, 3]])
    net = Net()
    count = count_macs(net, x)
    rows = {r.name: r for r in count.layers}
    assert rows["subm"].dense == 5 * 2 * 3
    assert rows["down"].dense == 3 * 3 * 5
    assert [(r.name, r.kind) for r in count.layers] == [("subm", "sparse_conv"), ("down", "sparse_conv")]
    assert count.dense == 5 * 2 * 3 + 3 * 3 * 5  # spconv's own aten ops (its implementation) are not counted again
    assert rows["subm"].weight is net.subm.weight
    assert rows["subm"].effective == rows["subm"].dense  # random init: no zero weights


def test_effective_macs_skip_zero_weights_per_offset():
    x = tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 3, 3, 3]])
    net = Net()
    with torch.no_grad():
        net.subm.weight.zero_()
        net.subm.weight[:, 1, 1, 1, :] = 1.0  # only the centre offset (every site's self pair): 3 pairs
        net.subm.weight[0, 1, 1, 2, 0] = 1.0  # offset (0, 0, +1): one pair (a reads b), one weight
    rows = {r.name: r for r in count_macs(net, x).layers}
    assert rows["subm"].dense == 5 * 2 * 3
    assert rows["subm"].effective == 3 * (2 * 3) + 1 * 1


def test_pairs_match_dense_neighbour_counts_on_random_clouds():
    g = torch.Generator().manual_seed(0)
    shape = (6, 6, 6)
    flat = torch.randperm(216, generator=g)[:40]
    coords = torch.stack([torch.zeros_like(flat), flat // 36, (flat // 6) % 6, flat % 6], 1).int()
    x = tensor(coords.tolist(), shape=shape)
    occ = torch.zeros(1, 1, *shape)
    occ[0, 0, coords[:, 1].long(), coords[:, 2].long(), coords[:, 3].long()] = 1
    ones = torch.ones(1, 1, 3, 3, 3)
    subm = sp.SubMConv3d(2, 3, 3, padding=1)
    neighbours = F.conv3d(occ, ones, padding=1)  # active inputs in each window
    assert int(pair_mask(subm, x, subm(x)).sum()) == int((neighbours * occ).sum())
    strided = sp.SparseConv3d(2, 3, 3, stride=2, padding=1)
    assert int(pair_mask(strided, x, strided(x)).sum()) == int(F.conv3d(occ, ones, stride=2, padding=1).sum())


def test_sops_weight_spike_values_by_fan_out():
    # a has spike values (2, 0), b has (1, 1); submanifold pairs: a<-a, a<-b, b<-b, b<-a
    x = tensor([[0, 0, 0, 0], [0, 0, 0, 1]], feats=torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
    conv = sp.SubMConv3d(2, 3, 3, padding=1, bias=False)
    dense, effective = sparse_conv_sops(conv, x, conv(x))
    assert dense == (2 + 2) * 2 * 3  # every input site is read twice (by itself and its neighbour)
    assert effective == dense


def test_inverse_conv_has_the_pairs_of_its_forward_conv():
    x = tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 3, 3, 3], [0, 2, 3, 1]])
    down = sp.SparseConv3d(2, 4, 2, stride=2, bias=False, indice_key="d")
    up = sp.SparseInverseConv3d(4, 2, 2, bias=False, indice_key="d")
    coarse = down(x)
    fine = up(coarse)
    assert torch.equal(fine.indices, x.indices)
    forward_pairs = pair_mask(down, x, coarse)
    inverse_pairs = pair_mask(up, coarse, fine)
    assert int(forward_pairs.sum()) == int(inverse_pairs.sum()) == 4
    assert inverse_pairs.shape == (8, len(coarse.indices))
    assert inverse_pairs.sum(1).tolist() == forward_pairs.sum(1).tolist()  # the same offsets
