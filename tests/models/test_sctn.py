import pytest
import torch

from sparse_lab.errors import UserError
from sparse_lab.models import build_model
from sparse_lab.models.sctn import PRESETS, sinkhorn, transport_flow
from sparse_lab.sparsity.prunable import prunable_parameters


def pair(b=2, n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    pc1 = torch.rand(b, n, 3, generator=g) * torch.tensor([2.0, 2.0, 1.0])
    return {"pc1": pc1, "pc2": pc1 + torch.tensor([0.1, 0.0, 0.0]) + 0.01 * torch.randn(b, n, 3, generator=g)}


def small_sctn(**kwargs):
    args = dict(channels=[8, 16, 16], voxel_size=0.25, graph_k=8, consistency_k=8, refine_width=8, num_heads=2)
    return build_model("sctn", modality="point_cloud_pair", num_classes=0, num_points=128, **{**args, **kwargs})


def test_balanced_sinkhorn_plan_has_uniform_marginals():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 20, 8, generator=g), torch.randn(2, 30, 8, generator=g)
    p1, p2 = torch.rand(2, 20, 3, generator=g), torch.rand(2, 30, 3, generator=g)
    plan = sinkhorn(f1, f2, p1, p2, epsilon=0.1, gamma=None, nb_iter=500)
    assert plan.shape == (2, 20, 30) and bool((plan >= 0).all())
    assert torch.allclose(plan.sum(2), torch.full((2, 20), 1 / 20), atol=1e-6)  # rows: exact after the last update
    assert torch.allclose(plan.sum(1), torch.full((2, 30), 1 / 30), atol=1e-4)  # columns: converged


def test_unbalanced_sinkhorn_relaxes_the_marginals():
    g = torch.Generator().manual_seed(1)
    f1, f2 = torch.randn(1, 10, 4, generator=g), torch.randn(1, 10, 4, generator=g)
    p = torch.rand(1, 10, 3, generator=g)
    plan = sinkhorn(f1, f2, p, p, epsilon=0.05, gamma=0.1, nb_iter=50)
    assert not torch.allclose(plan.sum(2), torch.full((1, 10), 0.1), atol=1e-3)
    assert float(plan.sum()) < 1.0


def test_transport_recovers_a_permuted_translation_from_matching_features():
    g = torch.Generator().manual_seed(2)
    pc1 = torch.rand(1, 50, 3, generator=g)
    perm = torch.randperm(50, generator=g)
    shift = torch.tensor([0.3, -0.2, 0.1])
    pc2 = (pc1 + shift)[:, perm]
    feats = torch.randn(1, 50, 64, generator=g)
    plan = sinkhorn(feats, feats[:, perm], pc1, pc2, epsilon=0.03, gamma=None, nb_iter=20)
    assert torch.allclose(transport_flow(plan, pc1, pc2), shift.expand(1, 50, 3), atol=1e-3)


def test_support_excludes_pairs_beyond_max_distance():
    pc1 = torch.zeros(1, 1, 3)
    pc2 = torch.tensor([[[0.5, 0, 0], [3.0, 0, 0]]])
    f = torch.ones(1, 1, 4)
    plan = sinkhorn(f, torch.ones(1, 2, 4), pc1, pc2, epsilon=0.1, gamma=1.0, nb_iter=3, max_distance=1.0)
    assert float(plan[0, 0, 1]) == 0.0 and float(plan[0, 0, 0]) > 0


def test_forward_shapes_and_gradients_reach_every_part():
    torch.manual_seed(0)
    model = small_sctn()
    out = model(pair())
    assert out["flow"].shape == (2, 128, 3) and out["flow_init"].shape == (2, 128, 3)
    assert out["features"].shape == (2, 128, 8)
    target = torch.full((2, 128, 3), 0.1)
    aux = model.auxiliary_losses(out, target, epoch=model.consistency_warmup_epochs)
    assert set(aux) == {"consistency", "flow_init"} and float(aux["consistency"].detach()) > 0
    loss = out["flow"].abs().mean() + sum(aux.values())
    loss.backward()
    for name in (
        "unet.enc1.0.0.weight",
        "unet.dec1.0.weight",
        "transformer.qkv.weight",
        "transport.log_epsilon",
        "refine1.fc1.weight",
        "fc.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_consistency_term_is_off_during_warmup_and_weighted_after():
    torch.manual_seed(0)
    model = small_sctn(consistency_warmup_epochs=3)
    with torch.no_grad():
        out = model(pair())
    target = torch.zeros(2, 128, 3)
    assert float(model.auxiliary_losses(out, target, epoch=2)["consistency"]) == 0.0
    on = float(model.auxiliary_losses(out, target, epoch=3)["consistency"])
    model.consistency_weight = 0.6
    assert float(model.auxiliary_losses(out, target, epoch=3)["consistency"]) == pytest.approx(2 * on, rel=1e-5)
    init = model.auxiliary_losses(out, target, epoch=0)["flow_init"]
    assert float(init) == pytest.approx(0.5 * float(out["flow_init"].abs().sum(-1).mean()), rel=1e-5)


def test_eval_mode_runs_on_cpu_and_first_and_last_layers_stay_dense():
    model = small_sctn().eval()
    with torch.no_grad():
        assert model(pair(b=1))["flow"].shape == (1, 128, 3)
    names = [p.name for p in prunable_parameters(model)]
    assert "unet.enc1.0.0.weight" not in names and "fc.weight" not in names
    assert "unet.enc2.0.0.weight" in names and "transformer.qkv.weight" in names


def test_presets_and_bad_values():
    assert PRESETS["paper"]["channels"] == (64, 128, 128) and PRESETS["paper"]["voxel_size"] == 0.07
    with pytest.raises(UserError, match="voxel_size"):
        small_sctn(voxel_size=0)
    with pytest.raises(UserError, match="preset"):
        build_model("sctn", modality="point_cloud_pair", preset="huge")
    with pytest.raises(UserError, match="data=flow3d"):
        build_model("sctn", modality="image", num_classes=10)


def test_attention_macs_count_both_frames_of_a_sample():
    from sparse_lab.measure import count_macs

    model = small_sctn()
    rows = count_macs(model, pair(b=1)).by_name()
    n, d = 128, 8
    assert rows["transformer"] == 2 * (2 * n * n * d)  # two frames, Q·Kᵀ and A·V each
    assert rows["transformer.qkv"] == 2 * n * d * 3 * d  # the Linear sees both frames of the sample
    assert rows["transport"] == n * n * (d + 2 * model.transport.nb_iter + 3)
