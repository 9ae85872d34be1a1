"""Masks hold through real optimizer steps: momentum and weight decay must not revive pruned weights."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparse_lab.models import build_model
from sparse_lab.sparsity import build_method
from sparse_lab.tasks.classification import ClassificationTask

OPTIMIZERS = {
    "sgd_momentum_wd": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "adamw": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.05},
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_pruned_weights_stay_exactly_zero(optimizer):
    pl.seed_everything(0, verbose=False)
    model = build_model("vit", modality="image", num_classes=4, image_size=16, in_chans=3, depth=2, patch_size=4)
    method = build_method("random", sparsity=0.8, distribution="erk")
    method.attach(model, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = TensorDataset(torch.randn(64, 3, 16, 16), torch.randint(0, 4, (64,)))
    task = ClassificationTask(model, 4, optimizer=optimizer, schedule="constant")
    trainer = pl.Trainer(
        max_steps=12,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[method],
    )
    trainer.fit(task, DataLoader(data, batch_size=16, shuffle=True))
    assert trainer.global_step == 12
    params = dict(model.named_parameters())
    for name, mask in method.masks.items():
        weight = params[name].detach()
        assert torch.all(weight[~mask] == 0), name
        assert not torch.equal(weight[mask], before[name][mask]), f"{name} did not train"
        assert int(torch.count_nonzero(weight)) == int(mask.sum())
