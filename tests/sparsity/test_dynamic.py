import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparse_lab.errors import UserError
from sparse_lab.models import build_model
from sparse_lab.sparsity import METHODS, build_method
from sparse_lab.tasks.classification import ClassificationTask


def tiny_vit():
    return build_model("vit", modality="image", num_classes=4, image_size=16, in_chans=3, depth=2, patch_size=4)


def loader(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g))
    return DataLoader(data, batch_size=16, shuffle=False)


class UpdateChecker(pl.Callback):
    """Runs after the method in on_before_optimizer_step: checks counts, grown weights and optimizer state."""

    def __init__(self, method, state_keys):
        self.method, self.state_keys = method, state_keys
        self.previous = None
        self.checked_updates = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.previous = {k: m.clone() for k, m in self.method.masks.items()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        method = self.method
        if not method.history or method.history[-1]["step"] != trainer.global_step:
            return
        params = {p.name: p.param for p in method.params}
        per_layer = method.scope == "layer"
        grown_total = 0
        for name, mask in method.masks.items():
            before = self.previous[name]
            if per_layer:
                assert int(mask.sum()) == int(before.sum()), name  # exact per-layer budget
            grown = mask & ~before
            grown_total += int(grown.sum())
            state = optimizer.state[params[name]]
            for key in self.state_keys:
                assert torch.all(state[key][grown] == 0), (name, key)
            assert torch.all(params[name].detach()[grown] == 0), name  # grown weights start at zero
        assert sum(int(m.sum()) for m in method.masks.values()) == sum(int(m.sum()) for m in self.previous.values())
        assert grown_total == method.history[-1]["changed"] > 0
        self.checked_updates += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = {p.name: p.param for p in self.method.params}
        for name, mask in self.method.masks.items():  # after the step: weights agree with the mask exactly
            assert int(torch.count_nonzero(params[name])) == int(mask.sum()), name


OPTIMIZERS = {
    "sgd": ({"name": "sgd", "lr": 0.05, "momentum": 0.9}, ["momentum_buffer"]),
    "adamw": ({"name": "adamw", "lr": 1e-2, "weight_decay": 0.05}, ["exp_avg", "exp_avg_sq"]),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=list(OPTIMIZERS))
@pytest.mark.parametrize("name", ["rigl", "set", "dsl"])
def test_budget_exact_and_grown_weights_reset_after_every_update(name, optimizer):
    pl.seed_everything(0, verbose=False)
    model = tiny_vit()
    method = build_method(name, sparsity=0.8, distribution="erk", delta_t=2, alpha=0.3, end_fraction=1.0)
    method.attach(model, seed=0)
    budget = {k: int(m.sum()) for k, m in method.masks.items()}
    opt_cfg, keys = OPTIMIZERS[optimizer]
    checker = UpdateChecker(method, keys)
    task = ClassificationTask(model, 4, optimizer=opt_cfg, schedule="constant")
    trainer = pl.Trainer(
        max_steps=12,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[method, checker],
    )
    trainer.fit(task, loader())
    assert [h["step"] for h in method.history] == [2, 4, 6, 8, 10]
    assert checker.checked_updates == 5
    assert sum(int(m.sum()) for m in method.masks.values()) == sum(budget.values())
    if name != "dsl":
        assert {k: int(m.sum()) for k, m in method.masks.items()} == budget
    assert method.global_sparsity() == pytest.approx(method.target_sparsity())
    assert method.details()["total_changed"] == sum(h["changed"] for h in method.history) > 0


def two_layer_method(name, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    method = build_method(
        name, sparsity=0.5, distribution="uniform", delta_t=1, alpha=0.5, alpha_schedule="constant", **kwargs
    )
    method.attach(model, seed=0)
    return model, method


def test_rigl_drops_smallest_magnitude_and_grows_largest_dense_gradient():
    model, method = two_layer_method("rigl")
    weight = model[1].weight
    mask = method.masks["1.weight"]
    with torch.no_grad():
        magnitudes = torch.arange(1, 17, dtype=torch.float32).view(4, 4)
        weight.copy_(magnitudes * mask)  # active weights: distinct magnitudes; inactive: zero
    grad = torch.rand(4, 4, generator=torch.Generator().manual_seed(1))
    weight.grad = grad.clone()
    model[2].weight.grad = torch.zeros(4, 4)
    active = mask.clone()
    changed = method.update_masks(step=1)
    # 8 active, alpha 0.5 -> 4 dropped: the 4 smallest |w| among the active ones
    active_values = magnitudes[active]
    dropped_expected = active & (magnitudes <= active_values.sort().values[3])
    # grown: the 4 largest |grad| among everything not surviving the drop
    survivors = active & ~dropped_expected
    candidates = torch.where(survivors, torch.tensor(-1.0), grad.abs())
    grown_expected = torch.zeros(16, dtype=torch.bool)
    grown_expected[candidates.view(-1).topk(4).indices] = True
    expected = survivors | grown_expected.view(4, 4)
    assert torch.equal(method.masks["1.weight"], expected)
    new = expected & ~active
    assert changed >= int(new.sum()) and torch.all(weight.detach()[new] == 0)
    assert int(method.masks["1.weight"].sum()) == 8


def test_set_grows_at_random_among_inactive_and_is_seeded():
    results = []
    for _ in range(2):
        model, method = two_layer_method("set")
        before = {k: m.clone() for k, m in method.masks.items()}
        method.update_masks(step=1)
        results.append({k: m.clone() for k, m in method.masks.items()})
        for k, m in method.masks.items():
            assert int(m.sum()) == int(before[k].sum())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_dsl_moves_budget_between_layers_and_keeps_the_total():
    model, method = two_layer_method("dsl")
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # layer 1: tiny weights -> loses connections
        model[2].weight.mul_(1e3)
    model[1].weight.grad = torch.zeros(4, 4)
    model[2].weight.grad = torch.ones(4, 4)  # layer 2: large gradients -> gains connections
    before = {k: int(m.sum()) for k, m in method.masks.items()}
    method.update_masks(step=1)
    after = {k: int(m.sum()) for k, m in method.masks.items()}
    assert sum(after.values()) == sum(before.values())
    assert after["1.weight"] < before["1.weight"] and after["2.weight"] > before["2.weight"]


def test_rigl_cosine_schedule_and_stop_at_three_quarters():
    method = build_method("rigl", sparsity=0.8, delta_t=100, alpha=0.3)
    method.total_steps = 1000
    assert method.update_fraction(0) == pytest.approx(0.3)
    assert method.update_fraction(375) == pytest.approx(0.15)
    assert method.update_fraction(750) == pytest.approx(0.0, abs=1e-12)
    assert [s for s in range(1, 1001) if method.is_update_step(s)] == [100, 200, 300, 400, 500, 600, 700]
    dsl = build_method("dsl")
    dsl.total_steps = 1000
    assert dsl.update_fraction(0) == pytest.approx(0.5) and dsl.update_fraction(1000) == pytest.approx(0.005)
    assert dsl.is_update_step(900) and build_method("set").update_fraction(999) == 0.3


@pytest.mark.parametrize("name,schedule", [("rigl", "cosine"), ("set", "constant"), ("dsl", "cosine")])
def test_alpha_schedule_from_the_config_sets_the_update_fraction(name, schedule, make_cfg):
    options = OmegaConf.to_container(make_cfg(f"sparsity={name}").sparsity)
    assert options["alpha_schedule"] == schedule and "decay" not in options
    method = METHODS.from_config(options)
    method.total_steps = 1000
    middle = method.update_fraction(method.end_step // 2)
    if schedule == "constant":
        assert middle == method.alpha
    else:
        assert middle == pytest.approx((method.alpha + method.final_alpha) / 2)
    flipped = "constant" if schedule == "cosine" else "cosine"
    other = METHODS.from_config(
        OmegaConf.to_container(make_cfg(f"sparsity={name}", f"sparsity.alpha_schedule={flipped}").sparsity)
    )
    other.total_steps = 1000
    assert other.update_fraction(other.end_step // 2) != pytest.approx(middle)
    with pytest.raises(UserError, match="sparsity.alpha_schedule 'linear'"):
        build_method(name, alpha_schedule="linear")


# -- DDP: masks agree across ranks -----------------------------------------------------------


class OwnCopies(pl.Callback):
    """ddp_spawn on CPU hands the spawned ranks the parent's tensors in shared memory: without private
    copies both ranks would step the very same weights and masks, and agreement would prove nothing."""

    def __init__(self, method):
        self.method = method

    def setup(self, trainer, pl_module, stage):  # runs in each rank before DDP wraps the model
        with torch.no_grad():
            for p in pl_module.parameters():
                p.data = p.data.clone()
        self.method.set_masks({k: m.clone() for k, m in self.method.masks.items()})


class GatherMasks(pl.Callback):
    """After each RigL update, gather every rank's masks; rank 0 records whether they are identical."""

    def __init__(self, method, path):
        self.method, self.path = method, str(path)
        self.lines = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self.method.history or self.method.history[-1]["step"] != trainer.global_step:
            return
        flat = torch.cat([m.view(-1) for m in self.method.masks.values()]).to(torch.uint8)
        gathered = pl_module.all_gather(flat)  # [world, numel]
        local_data = pl_module.all_gather(self.last_x_sum)
        weights = pl_module.all_gather(torch.cat([p.param.detach().reshape(-1) for p in self.method.params]))
        if trainer.global_rank == 0:
            same = bool(torch.equal(gathered[0], gathered[1]))
            self.lines.append(
                f"{trainer.global_step} {int(same)} {self.method.history[-1]['changed']} "
                f"{int(not torch.equal(local_data[0], local_data[1]))} "
                f"{int(torch.equal(weights[0], weights[1]))}"
            )
            with open(self.path, "w") as f:
                f.write("\n".join(self.lines))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.last_x_sum = batch[0].sum().reshape(1)


@pytest.mark.slow
def test_rigl_masks_bit_identical_across_ddp_ranks(tmp_path):
    # Spawned workers receive the model through shared memory; the default file-descriptor strategy
    # failed here with "unable to resize file" under load.
    strategy = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    pl.seed_everything(0, verbose=False)
    model = tiny_vit()
    method = build_method("rigl", sparsity=0.8, distribution="erk", delta_t=2, alpha=0.3, end_fraction=1.0)
    method.attach(model, seed=0)
    out = tmp_path / "masks.txt"
    task = ClassificationTask(model, 4, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, schedule="constant")
    trainer = pl.Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[OwnCopies(method), method, GatherMasks(method, out)],
    )
    try:
        trainer.fit(task, loader(n=192))
    finally:
        torch.multiprocessing.set_sharing_strategy(strategy)
    lines = [line.split() for line in out.read_text().splitlines()]
    assert [int(step) for step, *_ in lines] == [2, 4]
    for step, same, changed, different_data, same_weights in lines:
        assert same == "1", f"masks differ across ranks at step {step}"
        assert int(changed) > 0  # the masks did change
        assert different_data == "1"  # the ranks trained on different batches
        assert same_weights == "1"  # private weights, stepped with the all-reduced gradients
