"""Lottery ticket / IMP: exact densities per round, rewinding to exactly the saved weights, the reinit
control, and a fresh optimizer and schedule every round."""

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparse_lab.errors import UserError
from sparse_lab.models import build_model
from sparse_lab.sparsity import build_method
from sparse_lab.sparsity.masks import kept_count
from sparse_lab.tasks.classification import ClassificationTask


def small_vit():
    pl.seed_everything(0, verbose=False)
    return build_model(
        "vit",
        modality="image",
        num_classes=4,
        image_size=16,
        in_chans=3,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=4,
    )


@torch.no_grad()
def pretend_training(model, seed):
    """Move every parameter, as a round of training would (pruned weights are re-zeroed by the method)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.05)


def prunable_nonzeros(method):
    return [int(torch.count_nonzero(p.param)) for p in method.params]


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_density_after_each_round_is_exact_and_masks_nest(scope):
    model = small_vit()
    method = build_method("lottery", rounds=4, prune_rate=0.2, scope=scope)
    method.attach(model)
    assert method.rounds == 5  # dense round 0 + one per pruning round
    task = SimpleNamespace(model=model)
    total = sum(p.numel for p in method.params)
    previous = None
    for r in range(method.rounds):
        method.begin_round(r, task)
        counts = prunable_nonzeros(method)
        if scope == "global":
            assert sum(counts) == kept_count(0.8**r, total)
        else:
            assert counts == [kept_count(0.8**r, p.numel) for p in method.params]
        assert method.target_sparsity() == pytest.approx(1 - 0.8**r, abs=1e-4)
        assert method.global_sparsity() == pytest.approx(method.target_sparsity(), abs=1e-12)
        if r and previous is not None:
            for name, mask in method.masks.items():
                assert not torch.any(mask & ~previous.get(name, torch.ones_like(mask))), (
                    f"{name}: a pruned weight came back"
                )
        previous = {k: v.clone() for k, v in method.masks.items()}
        pretend_training(model, seed=r)
        method.apply_masks()
    assert method.details()["final_target_density"] == pytest.approx(0.8**4)


def test_rewind_to_init_restores_exactly_and_reinit_differs():
    states, masks = {}, {}
    for reinit in (False, True):
        model = small_vit()
        theta0 = {k: v.clone() for k, v in model.state_dict().items()}
        method = build_method("lottery", rounds=1, prune_rate=0.5, reinit=reinit)
        method.attach(model)
        task = SimpleNamespace(model=model)
        method.begin_round(0, task)
        pretend_training(model, seed=7)
        method.begin_round(1, task)
        states[reinit], masks[reinit] = {k: v.clone() for k, v in model.state_dict().items()}, method.masks
        if not reinit:
            for name, value in model.state_dict().items():
                mask = method.masks.get(name)
                if mask is None:  # every unpruned parameter and buffer is back at θ0
                    assert torch.equal(value, theta0[name]), name
                else:
                    assert torch.equal(value[mask], theta0[name][mask]), name
                    assert torch.all(value[~mask] == 0), name
    assert masks[True].keys() == masks[False].keys()
    for name in masks[False]:
        assert torch.equal(masks[True][name], masks[False][name]), "reinit must train the ticket's masks"
        mask = masks[False][name]
        assert not torch.equal(states[True][name][mask], states[False][name][mask]), name
        assert torch.all(states[True][name][~mask] == 0)
        # a fresh draw from the same initial distribution: θ0's values of that tensor, in another order
        assert torch.all(torch.isin(states[True][name][mask], theta0[name])), name


class Recorder(pl.Callback):
    def __init__(self, step):
        self.step, self.saved, self.starts = step, None, []

    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        self.starts.append((id(optimizer), len(optimizer.state), scheduler.last_epoch, optimizer.param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.saved is None and trainer.global_step == self.step:
            self.saved = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def test_rewind_to_step_and_fresh_optimizer_each_round():
    model = small_vit()
    method = build_method("lottery", rounds=2, prune_rate=0.3, rewind_step=2)
    method.attach(model)
    task = ClassificationTask(model, 4, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9}, schedule="cosine")
    recorder = Recorder(step=2)
    data = DataLoader(TensorDataset(torch.randn(32, 3, 16, 16), torch.randint(0, 4, (32,))), batch_size=8)
    for r in range(method.rounds):
        method.begin_round(r, task)
        if r == 1:  # rewound to the weights after step 2 of round 0, on the surviving positions
            for name, value in model.state_dict().items():
                mask = method.masks.get(name, torch.ones_like(value, dtype=torch.bool))
                assert torch.equal(value[mask], recorder.saved[name][mask]), name
        trainer = pl.Trainer(
            max_steps=4,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[method, recorder],
        )
        trainer.fit(task, data)
    assert len(recorder.starts) == 3
    assert len({s[0] for s in recorder.starts}) == 3, "each round builds its own optimizer"
    assert all(state == 0 and step == 0 for _, state, step, _ in recorder.starts), "momentum and schedule restart"
    assert len({lr for *_, lr in recorder.starts}) == 1, "each round starts the schedule at the same learning rate"
    assert sum(prunable_nonzeros(method)) == kept_count(0.7**2, sum(p.numel for p in method.params))


def test_rewind_step_past_round_zero_is_a_user_error():
    model = small_vit()
    method = build_method("lottery", rounds=1, rewind_step=10_000)
    method.attach(model)
    with pytest.raises(UserError, match="rewind_step"):
        method.begin_round(1, SimpleNamespace(model=model))
