"""MaskSparsity: the narrowed model computes what the masked model computes, with fewer parameters and
MACs; the regularisation touches only the selected scales (and the scales coupled to them); round 1 trains
the new, narrower tensors; models that declare nothing go through Torch-Pruning's dependency graph; every
model family trains with it. Per-family exactness of the surgery: test_channels.py."""

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparse_lab.errors import IncompatibleError
from sparse_lab.measure import count_macs, parameter_counts
from sparse_lab.models import build_model
from sparse_lab.sparsity import build_method
from sparse_lab.sparsity.channels import channel_groups
from sparse_lab.tasks.classification import ClassificationTask

SMALL = {
    "vit": dict(patch_size=4, embed_dim=32, depth=2, num_heads=4),
    "stvit": dict(patch_size=4, embed_dim=32, depth=4, num_heads=4, stgm_at=1, pool_size=2, num_global=1),
    "mobilenet_v2": dict(width_mult=0.35),
    "mobilenet_v1": dict(width_mult=0.25),
}


def small_model(name):
    pl.seed_everything(0, verbose=False)
    return build_model(name, modality="image", num_classes=5, image_size=16, in_chans=3, **SMALL[name])


def unselected(group, selected):
    return [i for i in range(group.size) if i not in set(selected[group.name].tolist())]


@torch.no_grad()
def trained_looking(model, groups):
    """BN statistics, biases and scales away from their init, so folding and gating matter."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    for group in groups:
        group.scale.copy_(torch.rand(group.size, generator=g) + 0.5)


@pytest.mark.parametrize("name", ["mobilenet_v2", "vit", "mobilenet_v1", "stvit"])
def test_narrowed_model_equals_masked_model_and_is_smaller(name):
    model = small_model(name)
    method = build_method("masksparsity", ratio=0.4, target="flops")
    method.attach(model)
    trained_looking(model, method.groups)
    x = torch.randn(8, 3, 16, 16)
    selected = method.select(model, x[:1])
    assert sum(len(v) for v in selected.values()) > 0

    masked = copy.deepcopy(model)  # the masked equivalent: the selected γ / gates set to zero
    with torch.no_grad():
        for group in channel_groups(masked):
            group.scale[selected[group.name]] = 0
    narrow = method.prune(model)

    masked.eval(), narrow.eval()
    with torch.no_grad():
        expected, got = masked(x), narrow(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))  # same predictions, so the same accuracy

    params_before, params_after = parameter_counts(model)[0], parameter_counts(narrow)[0]
    macs_before = count_macs(model, x[:1]).dense
    macs_after = count_macs(narrow, x[:1]).dense
    assert params_after < params_before and macs_after < macs_before
    if name in ("mobilenet_v2", "vit"):  # disjoint groups: the MAC estimate is exact
        assert 1 - macs_after / macs_before >= 0.4 - 1e-9
    # No gates are left (folded into the next layer): the narrowed model is a plain model of its family.
    assert all(getattr(m, "gate", None) is None for m in narrow.modules())
    assert method.summary()["params/removed_fraction"] == pytest.approx(1 - params_after / params_before)


def test_regularisation_touches_only_the_selected_scales():
    model = small_model("mobilenet_v2")
    method = build_method("masksparsity", ratio=0.3, target="channels", lam=1e-3)
    method.attach(model)
    trained_looking(model, method.groups)
    with torch.no_grad():  # some negative γ, so the sign matters
        method.groups[2].scale[:4] *= -1
    selected = method.select(model, torch.randn(1, 3, 16, 16))
    total = sum(g.size for g in method.groups)
    assert sum(len(v) for v in selected.values()) == round(0.3 * total)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    method.on_before_optimizer_step(None, None, None)
    scales = {id(g.scale): g for g in method.groups}
    for pname, p in model.named_parameters():
        group = scales.get(id(p))
        if group is None:
            assert torch.all(p.grad == 0), f"{pname} was regularised"
            continue
        idx = selected[group.name]
        expected = torch.zeros_like(p)
        expected[idx] = 1e-3 * torch.sign(p.detach()[idx])
        assert torch.equal(p.grad, expected), pname
    # The lowest-ranked channels were chosen: every selected |γ| <= every unselected one (one kind).
    chosen = torch.cat([g.scale.detach().abs()[selected[g.name]] for g in method.groups])
    kept = torch.cat([g.scale.detach().abs()[unselected(g, selected)] for g in method.groups])
    assert chosen.max() <= kept.min()


class Params(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_start(self, trainer, pl_module):
        self.seen.append({id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]})


def test_two_rounds_regularise_then_train_the_narrow_model():
    model = small_model("vit")
    method = build_method("masksparsity", ratio=0.5, target="channels", lam=0.2, warmup_fraction=0.25)
    method.attach(model)
    gates_before = [g.scale.detach().clone() for g in method.groups]
    task = ClassificationTask(model, 5, optimizer={"name": "sgd", "lr": 0.5}, schedule="constant")
    data = DataLoader(TensorDataset(torch.randn(64, 3, 16, 16), torch.randint(0, 5, (64,))), batch_size=16)
    seen = Params()
    for r in range(method.rounds):
        method.begin_round(r, task)
        trainer = pl.Trainer(
            max_steps=12,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[method, seen],
        )
        trainer.fit(task, data)
        if r == 0:
            sel = method.selected_scales()
            unsel = torch.cat([g.scale.detach()[unselected(g, method.selected)] for g in method.groups])
            assert sel.max() < 0.5 < unsel.min(), "λ·sign(γ) drove only the selected gates towards zero"
            assert not torch.equal(torch.cat(gates_before), torch.cat([g.scale.detach() for g in method.groups]))
            params_round0 = {id(p) for p in task.model.parameters()}
    assert task.model is not model and method.pruned
    assert seen.seen[1] == {id(p) for p in task.model.parameters()}, "round 1 optimises the narrow model's parameters"
    assert not (seen.seen[1] & params_round0)
    assert method.params and all(p.param is dict(task.model.named_parameters())[p.name] for p in method.params)
    heads = sum(b.attn.num_heads for b in task.model.blocks)
    units = sum(b.mlp.fc1.out_features for b in task.model.blocks)
    assert heads >= 2 and heads + units == 8 + 128 - round(0.5 * (8 + 128))
    assert parameter_counts(task.model)[0] < parameter_counts(model)[0]


@pytest.mark.parametrize("example", [None, torch.zeros(1, 3, 16, 16)])
def test_model_without_channel_groups_is_declared_incompatible(example):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 4))  # no BatchNorm
    with pytest.raises(IncompatibleError, match="no prunable channel groups"):
        build_method("masksparsity").attach(model, example_input=example)


class UsersCNN(nn.Module):
    """A model written outside sparse-lab that declares nothing: stem and body joined by a residual sum."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
        )
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.relu(x + self.body(x)).mean((2, 3)))


def test_generic_path_ranks_and_regularises_coupled_scales_and_narrows_a_users_cnn():
    torch.manual_seed(0)
    model, x = UsersCNN(), torch.randn(4, 3, 16, 16)
    method = build_method("masksparsity", ratio=4 / 24, target="channels", lam=1e-3)  # 4 of the 8 + 16 channels
    method.attach(model, example_input=x[:1])
    groups = {g.name: g for g in method.groups}
    assert set(groups) == {"stem.1", "body.1"}
    coupled = groups["stem.1"]
    assert coupled.scale is model.stem[1].weight and coupled.coupled_scales == (model.body[4].weight,)
    with torch.no_grad():  # channel 0 has the smallest γ in stem.1 but a large one in the coupled BN
        model.stem[1].weight.copy_(torch.tensor([0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]))
        model.body[4].weight.copy_(torch.tensor([2.0, 0.5, -0.6, 0.7, 0.8, 0.9, 1.0, 1.1]))
        model.body[1].weight.copy_(torch.linspace(1.5, 3.0, 16))
        for bn in (model.stem[1], model.body[1], model.body[4]):
            bn.bias.copy_(-torch.rand(bn.num_features))  # ≤ 0: removed channels are 0 after ReLU (exact removal)
            bn.running_mean.normal_()
    selected = method.select(model, x[:1])
    assert selected["stem.1"].tolist() == [1, 2, 3, 4] and not len(selected["body.1"])  # channel 0: mean |γ| 1.05
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    method.on_before_optimizer_step(None, None, None)
    for scale in (model.stem[1].weight, model.body[4].weight):
        expected = torch.zeros(8)
        expected[[1, 2, 3, 4]] = 1e-3 * torch.sign(scale.detach()[[1, 2, 3, 4]])
        assert torch.equal(scale.grad, expected)

    masked = copy.deepcopy(model)
    with torch.no_grad():
        for bn, name in ((masked.stem[1], "stem.1"), (masked.body[4], "stem.1"), (masked.body[1], "body.1")):
            bn.weight[selected[name]] = 0
    narrow = method.prune(model)
    masked.eval(), narrow.eval()
    with torch.no_grad():
        assert torch.allclose(narrow(x), masked(x), rtol=1e-5, atol=1e-6)
    assert narrow.stem[0].out_channels == narrow.body[3].out_channels == narrow.head.in_features == 4
    assert narrow.body[0].out_channels == 16 and narrow.head.out_features == 5
    assert method.stats["params_after"] < method.stats["params_before"]


@pytest.mark.parametrize("model", ["e3dsnn", "sctn", "delta_cnn"])
def test_runs_on_sparse_conv_spiking_and_delta_models(model, make_cfg, tmp_path):
    from sparse_lab.experiment import run

    cfg = make_cfg(
        f"model={model}",
        "sparsity=masksparsity",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    )
    results = run(cfg, tmp_path)
    stats = results["sparsity"]
    assert results["status"] == "completed" and stats["pruned"]
    assert results["metrics"]["params/total"] == stats["params_after"] < stats["params_before"]
    assert stats["macs_after"] < stats["macs_before"]


# -- selection: slimming, the network-slimming control (Liu et al. 2017) ------------------------------------
def test_selections_are_the_schemas_and_an_unknown_one_is_refused():
    from sparse_lab.errors import UserError
    from sparse_lab.schema import sparsity as sparsity_schema
    from sparse_lab.sparsity import masksparsity

    assert sparsity_schema.MaskSparsity.fields["selection"].choices == masksparsity.SELECTIONS
    assert build_method("masksparsity").selection == "masksparsity"  # the default is the paper's method
    with pytest.raises(UserError, match="sparsity.selection"):
        build_method("masksparsity", selection="l1")


def test_slimming_regularises_every_scale_before_any_selection():
    model = small_model("mobilenet_v2")
    method = build_method("masksparsity", selection="slimming", lam=1e-3, warmup_fraction=0.5)
    method.attach(model)
    trained_looking(model, method.groups)
    with torch.no_grad():  # some negative γ, so the sign matters
        method.groups[2].scale[:4] *= -1
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    method.on_before_optimizer_step(None, None, None)
    assert not method.selected, "slimming chooses the channels only when round 0 has ended"
    scales = {id(g.scale) for g in method.groups}
    for pname, p in model.named_parameters():
        expected = 1e-3 * torch.sign(p.detach()) if id(p) in scales else torch.zeros_like(p)
        assert torch.equal(p.grad, expected), pname

    # The generic path: a coupled BN's γ is penalised once, like every other γ.
    users = UsersCNN()
    method = build_method("masksparsity", selection="slimming", lam=1e-3)
    method.attach(users, example_input=torch.randn(1, 3, 16, 16))
    for p in users.parameters():
        p.grad = torch.zeros_like(p)
    method.on_before_optimizer_step(None, None, None)
    for bn in (users.stem[1], users.body[1], users.body[4]):
        assert torch.equal(bn.weight.grad, 1e-3 * torch.sign(bn.weight.detach()))


def one_sgd_step(selection, lam, lr=0.1):
    """Every group's scales after one plain-SGD step (no momentum, no decay on γ) in a Lightning round 0;
    slimming with a warm-up it must ignore, masksparsity with none (it selects before the step)."""
    model = small_model("mobilenet_v2")
    warmup = 0.99 if selection == "slimming" else 0.0
    method = build_method("masksparsity", selection=selection, lam=lam, ratio=0.3, warmup_fraction=warmup)
    method.attach(model)
    trained_looking(model, method.groups)
    with torch.no_grad():
        method.groups[1].scale[:3] *= -1
    before = [g.scale.detach().clone() for g in method.groups]
    task = ClassificationTask(model, 5, optimizer={"name": "sgd", "lr": lr}, schedule="constant")
    data = DataLoader(TensorDataset(torch.randn(16, 3, 16, 16), torch.randint(0, 5, (16,))), batch_size=8)
    method.begin_round(0, task)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[method],
    )
    trainer.fit(task, data)
    return method, before, [g.scale.detach().clone() for g in method.groups]


def test_slimming_shrinks_every_scale_by_lr_lam_per_step_masksparsity_only_the_selected():
    lr, lam = 0.1, 1e-2
    _, before, plain = one_sgd_step("masksparsity", 0.0, lr)  # the loss gradient alone
    slim, _, slimmed = one_sgd_step("slimming", lam, lr)
    mask, _, masked = one_sgd_step("masksparsity", lam, lr)
    assert not slim.selected and mask.selected
    for i, g in enumerate(mask.groups):
        shrink = -lr * lam * torch.sign(before[i])
        torch.testing.assert_close(slimmed[i] - plain[i], shrink, atol=1e-6, rtol=0)  # every channel
        expected = torch.zeros_like(shrink)
        expected[mask.selected[g.name]] = shrink[mask.selected[g.name]]
        torch.testing.assert_close(masked[i] - plain[i], expected, atol=1e-6, rtol=0)  # the selected only
    never_selected = sum(len(unselected(g, mask.selected)) for g in mask.groups)
    assert never_selected > 0


@pytest.mark.parametrize(("round_to", "min_channels"), [(1, 1), (8, 8)])
def test_slimming_removes_the_globally_smallest_scales_down_to_the_same_flop_target(round_to, min_channels):
    x = torch.randn(2, 3, 16, 16)
    chosen, reduction = {}, {}
    for selection in ("masksparsity", "slimming"):
        model = small_model("mobilenet_v2")
        method = build_method(
            "masksparsity", selection=selection, ratio=0.4, round_to=round_to, min_channels=min_channels
        )
        method.attach(model, example_input=x[:1])
        trained_looking(model, method.groups)
        groups = list(method.groups)
        task = ClassificationTask(model, 5)
        if selection == "masksparsity":
            method.select(model, x[:1])
        method.begin_round(1, task)  # slimming: the channels are chosen here, from round 0's final scales
        assert method.pruned and task.model is not model and method.details()["selection"] == selection
        chosen[selection] = {k: v.tolist() for k, v in method.selected.items()}
        reduction[selection] = 1 - count_macs(task.model, x[:1]).dense / count_macs(model, x[:1]).dense
        for g in groups:
            kept = g.size - len(method.selected[g.name])
            assert kept >= min_channels and (g.size % round_to or kept % round_to == 0), g.name
        if round_to == 1:  # one kind (BN γ): the removed channels are the globally smallest |γ|
            gone = torch.cat([g.scale.detach().abs()[method.selected[g.name]] for g in groups])
            left = torch.cat([g.scale.detach().abs()[unselected(g, method.selected)] for g in groups])
            assert gone.max() <= left.min()
            assert reduction[selection] >= 0.4 - 1e-9  # disjoint groups: the MAC estimate is exact
    assert chosen["slimming"] == chosen["masksparsity"]  # same scales, same ranking and target
    assert reduction["slimming"] == pytest.approx(reduction["masksparsity"])
    if round_to > 1:
        assert reduction["slimming"] == pytest.approx(0.4, abs=0.05)


def test_slimming_runs_both_rounds_and_says_so_in_results(make_cfg, tmp_path):
    from sparse_lab.experiment import run

    cfg = make_cfg(
        "model=mobilenet_v2",
        "sparsity=masksparsity",
        "sparsity.selection=slimming",
        "sparsity.lam=1e-2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    )
    results = run(cfg, tmp_path)
    stats = results["sparsity"]
    assert results["status"] == "completed" and stats["pruned"] and len(results["rounds"]) == 2
    assert results["config"]["sparsity"]["selection"] == stats["selection"] == "slimming"
    assert stats["macs_after"] < stats["macs_before"]
    assert results["metrics"]["macs/removed_fraction"] >= cfg.sparsity.ratio - 1e-9
    assert results["metrics"]["params/total"] == stats["params_after"] < stats["params_before"]
