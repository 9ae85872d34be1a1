import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparse_lab.errors import UserError
from sparse_lab.models import build_model
from sparse_lab.sparsity import build_method
from sparse_lab.sparsity.gmp import cubic_sparsity
from sparse_lab.tasks.classification import ClassificationTask


def test_cubic_schedule_at_chosen_steps():
    s = lambda t: cubic_sparsity(t, initial=0.0, final=0.8, start=10, end=50)
    assert s(0) == 0.0 and s(10) == 0.0
    assert s(30) == pytest.approx(0.8 - 0.8 * 0.5**3)  # halfway: 0.7
    assert s(20) == pytest.approx(0.8 - 0.8 * 0.75**3)  # 0.4625
    assert s(50) == pytest.approx(0.8) and s(90) == pytest.approx(0.8)
    assert cubic_sparsity(30, 0.2, 0.9, 10, 50) == pytest.approx(0.9 + (0.2 - 0.9) * 0.125)
    values = [s(t) for t in range(0, 60)]
    assert values == sorted(values)  # monotone


def tiny_vit():
    return build_model("vit", modality="image", num_classes=4, image_size=16, in_chans=3, depth=2, patch_size=4)


def test_prunes_on_schedule_with_exact_counts_and_pruned_weights_stay_pruned():
    pl.seed_everything(0, verbose=False)
    model = tiny_vit()
    method = build_method("gmp", sparsity=0.8, distribution="uniform", start=0.25, end=0.75, frequency=2)
    method.attach(model, seed=0)
    assert method.masks == {}  # s_i = 0: dense until t0
    seen = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append({k: m.clone() for k, m in method.masks.items()})

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(96, 3, 16, 16, generator=g), torch.randint(0, 4, (96,), generator=g))
    task = ClassificationTask(model, 4, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, schedule="constant")
    trainer = pl.Trainer(
        max_steps=12,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[method, Watch()],
    )
    trainer.fit(task, DataLoader(data, batch_size=16))
    assert (method.start_step, method.end_step) == (3, 9)
    assert [h["step"] for h in method.history] == [5, 7, 9]  # t0 (s_i = 0 prunes nothing), every 2, end
    for h in method.history:
        assert h["sparsity"] == pytest.approx(cubic_sparsity(h["step"], 0.0, 0.8, 3, 9))
        assert h["achieved"] == pytest.approx(h["sparsity"], abs=2e-3)  # exact count up to rounding
    assert method.history[-1]["sparsity"] == pytest.approx(0.8)
    for earlier, later in zip(seen, seen[1:]):  # masks only shrink
        for k, m in earlier.items():
            assert not torch.any(later[k] & ~m)
    for row in method.layer_table():
        assert abs(row["nonzero"] - 0.2 * row["numel"]) <= 0.5 + 1e-9


def test_final_sparsity_applied_if_training_stops_early():
    model = tiny_vit()
    method = build_method("gmp", sparsity=0.6, start=0.0, end=1.0, frequency=1000)
    method.attach(model)
    method.on_fit_end(trainer=type("T", (), {"global_step": 3})(), pl_module=None)
    assert method.global_sparsity() == pytest.approx(0.6, abs=1e-3)


def test_pointwise_only_prunes_just_1x1_convolutions():
    model = build_model("mobilenet_v2", modality="image", num_classes=10, image_size=32, in_chans=3)
    method = build_method("gmp", sparsity=0.85, pointwise_only=True)
    method.attach(model)
    assert method.params
    for p in method.params:
        assert p.param.ndim == 4 and p.shape[2:] == (1, 1) and p.module.groups == 1, p.name
    with pytest.raises(UserError, match="pointwise_only"):
        build_method("gmp", sparsity=0.5, pointwise_only=True).attach(tiny_vit())
