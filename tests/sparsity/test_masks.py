import pytest
import torch

from sparse_lab.errors import UserError
from sparse_lab.models import build_model
from sparse_lab.sparsity import build_method
from sparse_lab.sparsity.masks import kept_count, random_mask, topk_mask
from sparse_lab.sparsity.prunable import prunable_parameters


def test_topk_mask_keeps_exact_count_and_breaks_ties_by_index():
    scores = torch.tensor([[1.0, 3.0, 3.0], [3.0, 0.0, 2.0]])
    mask = topk_mask(scores, 2)
    assert mask.sum() == 2
    assert mask.tolist() == [[False, True, True], [False, False, False]]
    assert topk_mask(scores, 0).sum() == 0 and topk_mask(scores, 6).all()


@pytest.mark.parametrize("density", [0.0, 0.013, 0.1, 0.5, 0.999, 1.0])
def test_random_mask_exact_count(density):
    k = kept_count(density, 1000)
    mask = random_mask((10, 100), k, torch.Generator().manual_seed(0))
    assert int(mask.sum()) == k == round(density * 1000)


def small_vit():
    return build_model("vit", modality="image", num_classes=10, image_size=32, in_chans=3, depth=2)


def test_prunable_rule_covers_attention_weights_and_skips_first_and_last_layer():
    names = [p.name for p in prunable_parameters(small_vit())]
    assert "patch_embed.proj.weight" not in names and "head.weight" not in names
    assert "blocks.0.attn.qkv.weight" in names and "blocks.1.mlp.fc2.weight" in names
    assert all(n.endswith(".weight") for n in names)
    everything = [p.name for p in prunable_parameters(small_vit(), prune_first_layer=True, prune_classifier=True)]
    assert everything[0] == "patch_embed.proj.weight" and everything[-1] == "head.weight"
    assert "blocks.0.attn.qkv.weight" not in [p.name for p in prunable_parameters(small_vit(), exclude=[r"attn\.qkv"])]


def test_random_method_meets_every_layer_target_exactly():
    model = small_vit()
    method = build_method("random", sparsity=0.9, distribution="uniform")
    method.attach(model, seed=0)
    for row in method.layer_table():
        assert abs(row["nonzero"] - 0.1 * row["numel"]) <= 0.5 + 1e-9
    assert method.global_sparsity() == pytest.approx(0.9, abs=1e-3)


def test_masks_depend_on_the_seed_only():
    a, b, c = small_vit(), small_vit(), small_vit()
    masks = []
    for model, seed in ((a, 1), (b, 1), (c, 2)):
        method = build_method("random", sparsity=0.5, distribution="erk")
        method.attach(model, seed=seed)
        masks.append(method.masks)
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert any(not torch.equal(masks[0][k], masks[2][k]) for k in masks[0])


@pytest.mark.parametrize("bad", [1.5, -0.1, 1.0, "x"])
def test_impossible_sparsity_is_a_user_error(bad):
    with pytest.raises(UserError, match=r"sparsity.sparsity must be"):
        build_method("random", sparsity=bad)


def test_unknown_distribution_is_a_user_error():
    with pytest.raises(UserError, match="uniform, er, erk"):
        build_method("random", sparsity=0.5, distribution="gaussian")


def test_dense_method_has_no_masks():
    model = small_vit()
    method = build_method("dense")
    method.attach(model)
    assert method.masks == {} and method.global_sparsity() == 0.0
