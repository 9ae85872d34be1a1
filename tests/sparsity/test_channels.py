"""Channel groups and surgery: every family's declared groups, and the generic (Torch-Pruning) path.

The exactness claim: a narrowed model computes what the model with the removed channels' scales at zero
computes (eval mode). Where a removed channel's constant act(β) reaches a consumer that reads full
windows (linear, 1x1 conv) it is folded, so β is left random; where the consumer is spatial (padded 3x3
conv, sparse conv) nothing can be folded and the claim needs act(β) == 0, so the tests set such a channel's
β to a value the family's activation maps to zero (ReLU: β ≤ 0; integer spikes: 0 ≤ β < 0.5; Delta
layers: 0 ≤ β < step / 2), and one test shows the difference when it is not.
"""

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sparse_lab.data.points import voxelize
from sparse_lab.models import build_model
from sparse_lab.sparsity.channels import channel_groups
from sparse_lab.spconv_compat import spconv
from sparse_lab.surgery import (
    Consumer,
    ConvBN,
    bn_chain_group,
    complement,
    keep_bn,
    keep_inputs,
    keep_outputs,
    reads_full_windows,
)


def relu_silent(beta):  # ReLU(β) == 0
    return -beta.abs()


def spike_silent(beta):  # floor(clamp(β, 0, D) + 0.5) == 0 although β > 0
    return beta.abs() % 0.45


def delta_silent(beta):  # Q(ReLU(β)) == 0 for the quantizer step 0.125 although β > 0
    return beta.abs() % 0.06


def image_model(name, **kwargs):
    return build_model(name, modality="image", num_classes=5, image_size=16, in_chans=3, **kwargs)


def clouds():
    g = torch.Generator().manual_seed(0)
    return voxelize(torch.rand(2, 96, 3, generator=g) * 1.6 - 0.8, voxel_size=0.125)  # 16^3 grid


def scene_pair():
    g = torch.Generator().manual_seed(0)
    pc1 = torch.rand(1, 128, 3, generator=g) * torch.tensor([2.0, 2.0, 1.0])
    return {"pc1": pc1, "pc2": pc1 + torch.tensor([0.1, 0.0, 0.0]) + 0.01 * torch.randn(1, 128, 3, generator=g)}


# family -> (model, input, silent β for removed channels that reach a spatial consumer)
FAMILIES = {
    "mobilenet_v1": lambda: (image_model("mobilenet_v1", width_mult=0.25), torch.randn(4, 3, 16, 16), None),
    "mobilenet_v2": lambda: (image_model("mobilenet_v2", width_mult=0.35), torch.randn(4, 3, 16, 16), None),
    "vit": lambda: (
        image_model("vit", patch_size=4, embed_dim=32, depth=2, num_heads=4),
        torch.randn(4, 3, 16, 16),
        None,
    ),
    "stvit": lambda: (
        image_model("stvit", patch_size=4, embed_dim=32, depth=4, num_heads=4, stgm_at=1, pool_size=2, num_global=1),
        torch.randn(4, 3, 16, 16),
        None,
    ),
    # depths [1, 0]: residual blocks in stage 0, and a last stage whose channels fold into the head
    "e3dsnn": lambda: (
        build_model(
            "e3dsnn",
            modality="point_cloud",
            num_classes=5,
            in_chans=4,
            grid_size=16,
            embed_dim=8,
            channels=[8, 16],
            depths=[1, 0],
        ),
        clouds(),
        spike_silent,
    ),
    "sctn": lambda: (
        build_model(
            "sctn",
            modality="point_cloud_pair",
            num_classes=0,
            num_points=128,
            channels=[8, 16, 16],
            voxel_size=0.25,
            graph_k=8,
            consistency_k=8,
            refine_width=8,
            num_heads=2,
        ),
        scene_pair(),
        relu_silent,
    ),
    "delta_cnn": lambda: (
        build_model(
            "delta_cnn", modality="video", num_classes=5, image_size=16, in_chans=1, num_frames=4, channels=(4, 8, 8)
        ),
        torch.randn(2, 4, 1, 16, 16),
        delta_silent,
    ),
}


@torch.no_grad()
def trained_looking(model, groups, x, seed=1):
    """BN running statistics of one training-mode pass (normalised activations: units fire, spikes spike),
    then β and scales away from their init, so that folding and gating matter."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one pass sets the batch statistics
    model.train()
    model(x)
    g = torch.Generator().manual_seed(seed)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
        bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.5)
    for group in groups:
        for scale in (group.scale, *group.coupled_scales):
            scale.copy_(torch.rand(group.size, generator=g) + 0.5)


def half_of_each(groups, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {grp.name: torch.randperm(grp.size, generator=g)[: grp.size // 2].sort().values for grp in groups}


@torch.no_grad()
def mask(model, groups, removed, silent, everywhere=False):
    """The masked model: removed channels' scales at zero; their β silenced where they reach a spatial
    consumer (for BN chains the consumer is the last of the group's layers), or ``everywhere``."""
    bn_of = {id(m.weight): m for m in model.modules() if isinstance(m, _BatchNorm) and m.affine}
    for group in groups:
        idx = removed[group.name]
        spatial = everywhere or not reads_full_windows(model.get_submodule(group.layers[-1]))
        for scale in (group.scale, *group.coupled_scales):
            scale[idx] = 0
            bn = bn_of.get(id(scale))
            if bn is not None and spatial and silent is not None:
                bn.bias[idx] = silent(bn.bias[idx])


def narrowed(model, removed, example_input=None):
    narrow = copy.deepcopy(model)
    for group in channel_groups(narrow, example_input=example_input):
        group.keep(complement(removed[group.name], group.size))
    return narrow


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, dict) else {"out": out}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_narrowed_model_computes_what_the_masked_model_computes(family):
    pl.seed_everything(0, verbose=False)
    model, x, silent = FAMILIES[family]()
    groups = channel_groups(model, add_gates=True)
    assert groups and len({g.name for g in groups}) == len(groups)
    trained_looking(model, groups, x)
    removed = half_of_each(groups)
    mask(model, groups, removed, silent)
    narrow = narrowed(model, removed)

    expected, got = outputs(model, x), outputs(narrow, x)
    for key in expected:
        if torch.is_floating_point(expected[key]):
            assert torch.allclose(got[key], expected[key], rtol=1e-5, atol=1e-5), (family, key)
    before, after = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in narrow.parameters())
    assert after < before
    # The tensors really are narrower: every group, found again, has exactly the kept channels.
    sizes = {g.name: g.size for g in channel_groups(narrow, add_gates=True)}
    assert sizes == {g.name: g.size - len(removed[g.name]) for g in groups}


@pytest.mark.parametrize("family", ["e3dsnn", "delta_cnn"])
def test_only_chains_into_the_classifier_can_fold(family):
    """Their removed β stay random in the test above: the nonzero spike count / quantized ReLU is folded."""
    model, _, _ = FAMILIES[family]()
    folding = [g for g in channel_groups(model) if reads_full_windows(model.get_submodule(g.layers[-1]))]
    assert [g.layers[-1] for g in folding] == (["head"] if family == "e3dsnn" else ["classifier.layer"])


def tiny_chain(consumer_kernel):
    conv, bn, act = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU()
    reader = nn.Conv2d(6, 4, consumer_kernel, padding=consumer_kernel // 2)
    net = nn.Sequential(conv, bn, act, reader)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.bias.copy_(torch.tensor([0.5, -0.3, 0.8, 0.2, -0.1, 0.4]))
    group = bn_chain_group("0", ConvBN("0", conv, bn), act, Consumer("3", reader))
    return net.eval(), group


@pytest.mark.parametrize("kernel", [1, 3])
def test_surgery_folds_constants_only_into_full_window_consumers(kernel):
    torch.manual_seed(0)
    net, group = tiny_chain(kernel)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        group.scale[[0, 2]] = 0  # β = 0.5, 0.8 > 0: these channels output a nonzero constant
        expected = net(x)
        group.keep(torch.tensor([1, 3, 4, 5]))
        got = net(x)
    assert net[3].weight.shape[1] == 4 and net[1].num_features == 4
    # 1x1: folded into the bias, exact. 3x3 with padding: the border sees the constant only partly, so the fold
    # is impossible and the constant is dropped: exact only where the constant was 0 (β ≤ 0 under ReLU).
    assert torch.allclose(got, expected, atol=1e-6) == (kernel == 1)


def test_sparse_conv_surgery_uses_spconv_weight_layout():
    conv = spconv.pytorch.SubMConv3d(6, 5, 3, padding=1, bias=False, indice_key="k")  # weight [C_out, 3, 3, 3, C_in]
    weight = conv.weight.detach().clone()
    keep_outputs(conv, torch.tensor([0, 3, 4]))
    keep_inputs(conv, torch.tensor([1, 2]), offset=2, width=3)  # inputs 2..4 are a concatenated slice
    assert (conv.out_channels, conv.in_channels) == (3, 5) and conv.weight.shape == (3, 3, 3, 3, 5)
    assert torch.equal(conv.weight, weight[[0, 3, 4]][..., [0, 1, 3, 4, 5]])
    bn = nn.BatchNorm1d(5)
    keep_bn(bn, torch.tensor([0, 3, 4]))
    assert bn.weight.shape == bn.running_mean.shape == (3,)
    assert not reads_full_windows(conv) and reads_full_windows(spconv.pytorch.SubMConv3d(4, 4, 1, indice_key="p"))


# -- generic path -----------------------------------------------------------------------------------
def test_generic_path_on_torchvision_resnet18():
    """Coupled residual channels form one group (the first BN's γ as scale, the others' as coupled scales);
    the classifier keeps its outputs; nothing is folded, so a narrowed ResNet computes what the masked one
    computes when the removed channels are 0 after ReLU (β ≤ 0 in every coupled BN)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    groups = channel_groups(model, example_input=x[:1])
    by_name = {g.name: g for g in groups}
    assert len(groups) == 12 and by_name["layer1.0.bn1"].coupled_scales == ()
    assert [len(by_name[n].coupled_scales) for n in ("bn1", "layer2.0.bn2", "layer3.0.bn2", "layer4.0.bn2")] == [2] * 4
    assert "fc" in by_name["layer4.0.bn2"].layers  # its inputs narrow with the last stage; its outputs never

    trained_looking(model, groups, x)
    removed = half_of_each(groups)
    mask(model, groups, removed, relu_silent, everywhere=True)  # every BN reaches a ReLU (residual sums too)
    narrow = narrowed(model, removed, example_input=x[:1])
    expected, got = outputs(model, x)["out"], outputs(narrow, x)["out"]
    assert got.shape == expected.shape == (2, 5)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert narrow.fc.in_features == 512 - len(removed["layer4.0.bn2"]) and narrow.fc.out_features == 5
    assert narrow.layer1[0].conv1.in_channels == narrow.bn1.num_features == 64 - len(removed["bn1"])
