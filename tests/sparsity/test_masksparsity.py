"""MaskSparsity: the narrowed model computes what the masked model computes, with fewer parameters and
MACs; the regularisation touches only the selected scales; round 1 trains the new, narrower tensors."""

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
    macs_before = sum(r.dense for r in count_macs(model, x[:1]))
    macs_after = sum(r.dense for r in count_macs(narrow, x[:1]))
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
    kept = torch.cat([g.scale.detach().abs()[[i for i in range(g.size) if i not in set(selected[g.name].tolist())]] for g in method.groups])
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
        trainer = pl.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[method, seen])
        trainer.fit(task, data)
        if r == 0:
            sel = method.selected_scales()
            unsel = torch.cat([
                g.scale.detach()[[i for i in range(g.size) if i not in set(method.selected[g.name].tolist())]] for g in method.groups
            ])
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


def test_model_without_channel_groups_is_declared_incompatible():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    with pytest.raises(IncompatibleError, match="no prunable channel groups"):
        build_method("masksparsity").attach(model)
