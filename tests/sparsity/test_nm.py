import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from torch import nn

from sparse_lab.experiment import run
from sparse_lab.models import build_model
from sparse_lab.sparsity import METHODS, build_method
from sparse_lab.sparsity.nm import grouped_view, nm_mask, sr_ste_weight


def reference_mask(weight, n, m):
    """Sort-based N:M mask along the input dimension (ties to the lower index)."""
    scores = grouped_view(weight.contiguous(), m).abs()
    order = torch.argsort(scores, dim=2, descending=True, stable=True)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(2, order[:, :, :n], True).view(weight.shape)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (4, 8), (1, 8), (2, 16)])
@pytest.mark.parametrize("shape", [(6, 16), (5, 16, 3, 3), (4, 32, 1, 1)])
def test_mask_keeps_the_n_largest_of_every_group_along_the_input_dim(shape, n, m):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    mask = nm_mask(weight, n, m)
    assert torch.equal(mask, reference_mask(weight, n, m))
    assert (grouped_view(mask, m).sum(2) == n).all()


def test_conv_groups_run_along_input_channels_at_each_kernel_position():
    weight = torch.zeros(1, 4, 2, 2)
    weight[0, :, 0, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # kernel position (0, 0): keep channels 0, 1
    weight[0, :, 1, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # kernel position (1, 1): keep channels 2, 3
    mask = nm_mask(weight, 2, 4)
    assert mask[0, :, 0, 0].tolist() == [True, True, False, False]
    assert mask[0, :, 1, 1].tolist() == [False, False, True, True]


def test_ties_keep_exactly_n_per_group():
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    mask = nm_mask(weight, 2, 4)
    assert mask.tolist() == [[True, True, False, False, True, True, False, False]]
    assert mask.sum() == 4 and nm_mask(weight, 1, 4).sum() == 2


def test_sr_ste_gradient_on_a_hand_made_tensor():
    w = torch.tensor([[0.5, -2.0, 1.0, -0.1]], requires_grad=True)
    mask = nm_mask(w, 2, 4)
    assert mask.tolist() == [[False, True, True, False]]
    out = sr_ste_weight(w, mask, sr_ste_lambda=0.1)
    assert out.tolist() == [[0.0, -2.0, 1.0, -0.0]]
    upstream = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    out.backward(upstream)
    # straight-through gradient everywhere, plus lambda * (1 - E) * W on the pruned weights
    expected = upstream + 0.1 * torch.tensor([[0.5, 0.0, 0.0, -0.1]])
    assert torch.allclose(w.grad, expected)
    w.grad = None
    sr_ste_weight(w, mask, sr_ste_lambda=0.0).backward(upstream)  # plain STE
    assert torch.equal(w.grad, upstream)


@pytest.mark.parametrize("preset,n,m", [("nm", 2, 4), ("nm14", 1, 4), ("nm24", 2, 4), ("nm48", 4, 8)])
def test_presets_compose_nm_and_change_only_n_and_m(preset, n, m, make_cfg):
    base = OmegaConf.to_container(make_cfg("sparsity=nm").sparsity)
    options = OmegaConf.to_container(make_cfg(f"sparsity={preset}").sparsity)
    assert options == {**base, "n": n, "m": m}
    method = METHODS.from_config(options)
    assert (method.n, method.m, method.sr_ste_lambda) == (n, m, 2e-4)  # the paper's λ_w


def test_sr_ste_lambda_from_the_config_reaches_the_gradient(make_cfg):
    options = OmegaConf.to_container(make_cfg("sparsity=nm24", "sparsity.sr_ste_lambda=0.5").sparsity)
    method = METHODS.from_config(options)
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(3, 2))
    method.attach(layer)
    x, w = torch.randn(5, 4), layer[1].weight

    def grad(sr_ste: bool) -> torch.Tensor:
        method.sr_ste, w.grad = sr_ste, None
        method.install()
        layer(x).sum().backward()
        method.remove()
        return w.grad.clone()

    # Same forward with and without SR-STE: the gradients differ by exactly λ_w (1 − E) ⊙ W.
    pruned = ~nm_mask(w.detach(), 2, 4)
    assert torch.allclose(grad(True) - grad(False), 0.5 * w.detach() * pruned)
    assert method.details()["sr_ste_lambda"] == 0.0  # sr_ste off: no λ_w term reported


def test_the_old_ambiguous_decay_key_is_rejected(make_cfg):
    with pytest.raises(ConfigCompositionException, match="decay"):
        make_cfg("sparsity=nm24", "sparsity.decay=0.1")


def test_forward_uses_masked_weight_and_state_dict_keeps_dense_weights():
    layer = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(3, 2))  # middle: 8 inputs -> 2:4
    method = build_method("nm", n=2, m=4)
    method.attach(layer)
    assert [p.name for p in method.params] == ["1.weight"] and method.masks == {}
    method.install()
    x = torch.randn(5, 8)
    w = layer[1].weight
    assert torch.allclose(layer[1](x), x @ (w * nm_mask(w, 2, 4)).T + layer[1].bias)
    assert set(layer.state_dict()) == {f"{i}.{k}" for i in range(3) for k in ("weight", "bias")}
    assert layer[1].weight is w and isinstance(layer[1].weight, nn.Parameter)
    method.remove()
    assert torch.allclose(layer[1](x), x @ w.T + layer[1].bias)  # hooks gone


def test_progressive_schedule_steps_n_down_from_m():
    method = build_method("nm", n=1, m=4, ramp_fraction=0.5)
    method._total_steps = 100
    assert [method.n_at(s) for s in (0, 12, 13, 30, 49, 50, 99)] == [4, 4, 3, 2, 1, 1, 1]
    assert build_method("nm", n=2, m=4).n_at(0) == 2


def test_layers_not_divisible_by_m_stay_dense_and_are_listed():
    model = build_model("mobilenet_v2", modality="image", num_classes=10, image_size=32, in_chans=3)
    method = build_method("nm", n=2, m=4)
    method.attach(model)
    dense = method.details()["dense_layers"]
    indivisible = [d for d in dense if "not a multiple of 4" in d["reason"]]
    assert indivisible and all(d["shape"][1] == 1 for d in indivisible)  # the depthwise convolutions
    # The others are the rule's: the stem and the classifier (build_method's defaults keep both dense).
    assert [d["reason"].split(" (")[0] for d in dense if d not in indivisible] == ["first layer", "classifier"]
    assert method.target_sparsity() == 0.5


@pytest.mark.parametrize("model", ["vit", "mobilenet_v2"])
def test_after_training_every_sparsified_layer_is_2_to_4(model, make_cfg, tmp_path):
    cfg = make_cfg(f"model={model}", "sparsity=nm24", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1")
    results = run(cfg, tmp_path)
    assert results["status"] == "completed"
    state = torch.load(tmp_path / "final_model.pt", weights_only=True)
    names = results["sparsity"]["sparsified_layers"]
    assert names
    for name in names:
        groups = grouped_view(state[name].contiguous(), 4)
        assert ((groups != 0).sum(2) <= 2).all(), name
    assert results["metrics"]["sparsity/global"] >= 0.5 - 1e-6
    assert results["metrics"]["sparsity/target"] == 0.5


def test_spconv_groups_run_along_input_channels_which_spconv_stores_last():
    from sparse_lab.sparsity.nm import input_last, nm_mask
    from sparse_lab.sparsity.prunable import prunable_parameters
    from sparse_lab.spconv_compat import spconv

    net = torch.nn.Sequential(
        spconv.pytorch.SubMConv3d(8, 8, 3, bias=False, indice_key="a"),
        spconv.pytorch.SubMConv3d(8, 8, 3, bias=False, indice_key="a"),
        spconv.pytorch.SubMConv3d(8, 4, 3, bias=False, indice_key="a"),
    )
    layer = prunable_parameters(net)[0]
    assert input_last(layer.module) and layer.fan_shape == (8, 8, 3, 3, 3)
    weight = layer.param.detach()
    mask = nm_mask(weight, 2, 4, last=True)
    groups = mask.reshape(-1, 4)  # C_in is the contiguous last axis: consecutive 4 = one group
    assert torch.all(groups.sum(dim=1) == 2)
    kept = weight.abs().reshape(-1, 4)
    assert torch.all(kept[groups].reshape(-1, 2).min(dim=1).values >= kept[~groups].reshape(-1, 2).max(dim=1).values)
