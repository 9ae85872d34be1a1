"""Which layers each method prunes by default follows its paper (configs/sparsity/*.yaml cite them), and
results.json says which weight layers stayed dense and why."""

import pytest

from sparse_lab.experiment import run
from sparse_lab.models import build_model
from sparse_lab.sparsity import build_method
from sparse_lab.sparsity.masks import kept_count

# (prune_first_layer, prune_classifier) of each method's config.
PAPER_DEFAULTS = {
    "rigl": (False, True),  # google-research/rigl: first_layer_sparsity=0, last_layer_sparsity=-1
    "random": (True, True),  # Liu et al. 2022: ER/ERK over every conv/linear weight
    "lottery": (True, True),  # Frankle & Carbin / open_lth: every conv/linear weight
    "set": (True, False),  # SET-MLP: sparse input layer, dense output layer
    "nm24": (True, False),  # NM-sparsity: SparseConv stem, nn.Linear classifier
    "gmp": (False, True),  # Zhu & Gupta: the classifier pruned
    "dsl": (False, False),  # the paper is silent: the project's rule
    "dense": (False, False),
    "masksparsity": (False, False),
}


@pytest.mark.parametrize("method", sorted(PAPER_DEFAULTS))
def test_method_configs_default_to_their_papers(method, make_cfg):
    cfg = make_cfg(f"sparsity={method}")
    assert (cfg.sparsity.prune_first_layer, cfg.sparsity.prune_classifier) == PAPER_DEFAULTS[method]
    if method == "lottery":
        assert cfg.sparsity.classifier_rate_factor == 0.5  # the output layer at half the rate (layerwise)


def vit():
    return build_model("vit", modality="image", num_classes=10, image_size=32, preset="tiny")


def test_rigl_prunes_the_classifier_inside_the_erk_budget_and_keeps_the_first_layer_dense(make_cfg, tmp_path):
    results = run(make_cfg("model=vit", "model.preset=tiny", "sparsity=rigl"), tmp_path)
    sparsity = results["sparsity"]
    assert (sparsity["prune_first_layer"], sparsity["prune_classifier"]) == (False, True)
    assert sparsity["dense_layers"] == [
        {
            "name": "patch_embed.proj.weight",
            "shape": [32, 3, 8, 8],
            "reason": "first layer (sparsity.prune_first_layer=false)",
        }
    ]
    layers = {row["name"]: row for row in results["layers"]}
    assert "head.weight" in layers and layers["head.weight"]["density"] < 1.0
    assert "patch_embed.proj.weight" not in layers


def test_dense_layers_name_their_reason():
    method = build_method("random", sparsity=0.5, exclude=[r"blocks\.0\.attn"])
    method.attach(vit())
    reasons = {row["name"]: row["reason"] for row in method.details()["dense_layers"]}
    assert reasons == {
        "patch_embed.proj.weight": "first layer (sparsity.prune_first_layer=false)",
        "blocks.0.attn.qkv.weight": r"excluded (sparsity.exclude: 'blocks\\.0\\.attn')",
        "blocks.0.attn.proj.weight": r"excluded (sparsity.exclude: 'blocks\\.0\\.attn')",
        "head.weight": "classifier (sparsity.prune_classifier=false)",
    }
    everything = build_method("random", sparsity=0.5, prune_first_layer=True, prune_classifier=True)
    everything.attach(vit())
    assert everything.details()["dense_layers"] == []
    assert {"patch_embed.proj.weight", "head.weight"} <= {p.name for p in everything.params}


def test_every_method_reports_its_dense_layers():
    for name in ("dense", "random", "rigl", "set", "dsl", "gmp", "lottery", "nm"):
        method = build_method(name)
        method.attach(vit())
        details = method.details()
        names = [row["name"] for row in details["dense_layers"]]
        assert names == ["patch_embed.proj.weight", "head.weight"], name  # constructors keep the project rule
        assert details["prune_first_layer"] is False and details["exclude"] == [], name


def test_gmp_pointwise_only_says_why_a_layer_stays_dense():
    model = build_model("mobilenet_v1", modality="image", num_classes=10, image_size=32, in_chans=3)
    method = build_method("gmp", pointwise_only=True, prune_classifier=True)
    method.attach(model)
    reasons = {row["reason"] for row in method.details()["dense_layers"]}
    assert reasons == {
        "first layer (sparsity.prune_first_layer=false)",
        "not a 1x1 convolution (sparsity.pointwise_only=true)",
    }


def test_lottery_layerwise_prunes_the_classifier_at_half_the_rate():
    method = build_method(
        "lottery", rounds=2, prune_rate=0.2, scope="layerwise", classifier_rate_factor=0.5, prune_classifier=True
    )
    model = vit()
    method.attach(model)
    assert method.classifier_weights == {"head.weight"}
    for index, density in ((1, 0.8), (2, 0.64)):
        masks = method.prune(index)
        method.set_masks(masks)
        head, qkv = model.head.weight, model.blocks[0].attn.qkv.weight
        assert int(masks["head.weight"].sum()) == kept_count(0.9**index, head.numel())
        assert int(masks["blocks.0.attn.qkv.weight"].sum()) == kept_count(density, qkv.numel())
    # Global scope ranks the classifier with the rest: the factor does not apply.
    glob = build_method("lottery", prune_rate=0.2, scope="global", classifier_rate_factor=0.5, prune_classifier=True)
    glob.attach(vit())
    total = sum(p.numel for p in glob.params)
    assert sum(int(m.sum()) for m in glob.prune(1).values()) == kept_count(0.8, total)
