"""The deployed model: folded, exported, loadable with torch alone, faster kernels only where measured faster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lab.data.points import voxelize
from sparse_lab.experiment import run
from sparse_lab.hardware import deploy as deploy_module
from sparse_lab.hardware.deploy import CsrLinear, choose_kernels, deploy, inference_copy, with_kernels
from sparse_lab.models import build_model
from sparse_lab.sparsity import build_method

# Runs in a fresh interpreter that refuses sparse_lab (an editable install puts it on every path):
# the program must load and compute with torch alone.
LOAD_WITHOUT_SPARSE_LAB = """
import sys
sys.modules["sparse_lab"] = None  # any `import sparse_lab...` now raises ImportError
sys.path = [p for p in sys.path if p and not p.startswith({repo!r})]
try:
    import sparse_lab  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("sparse_lab importable")
import torch
ref = torch.load(sys.argv[2])
out = torch.export.load(sys.argv[1]).module()(ref["input"])
assert torch.allclose(out, ref["output"], atol=1e-5), (out - ref["output"]).abs().max()
print("match")
"""
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loads_and_matches_without_sparse_lab(program_path, model: nn.Module, x: torch.Tensor, tmp_path) -> None:
    with torch.no_grad():
        expected = model.eval()(x)
    torch.save({"input": x, "output": expected}, tmp_path / "reference.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = LOAD_WITHOUT_SPARSE_LAB.format(repo=REPO)
    done = subprocess.run(
        [sys.executable, "-c", code, str(program_path), str(tmp_path / "reference.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "match" in done.stdout, done.stderr[-2000:]


def no_timer(name, calls):
    raise AssertionError(f"{name} timed, but nothing should be")


@torch.no_grad()
def masked_vit(sparsity=0.9):
    pl.seed_everything(0, verbose=False)
    model = build_model("vit", modality="image", num_classes=10, image_size=16, in_chans=1, preset="tiny", patch_size=4)
    for p in model.parameters():
        if p.ndim == 2:
            p.mul_(torch.rand_like(p) >= sparsity)
    return model


def test_masked_vit_program_loads_without_sparse_lab_and_matches(tmp_path):
    model = masked_vit()
    x = torch.randn(1, 1, 16, 16)
    deployment = deploy(model, x, tmp_path / "deployed.pt2", batch_input=x.repeat(4, 1, 1, 1))
    assert deployment.status == "exported" and deployment.reason is None
    assert (tmp_path / "deployed.pt2").is_file() and deployment.max_abs_diff < 1e-5
    loads_and_matches_without_sparse_lab(tmp_path / "deployed.pt2", model, x, tmp_path)
    # Dynamic batch: the same program at another batch size computes what the model computes.
    xb = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(deployment.module(xb), model.eval()(xb), atol=1e-5, rtol=1e-5)
    # Every sparse enough linear layer is recorded with its kernel (dense on the CPU, with the reason).
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"]
    assert set(linears) <= set(deployment.kernels)
    for row in deployment.kernels.values():
        assert row["kernel"] in ("dense", "csr") and (row["kernel"] == "csr" or row.get("reason"))


def test_masksparsity_narrowed_mobilenet_program_loads_and_matches(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = build_model("mobilenet_v2", modality="image", num_classes=5, image_size=16, in_chans=3, width_mult=0.35)
    method = build_method("masksparsity", ratio=0.5, target="flops")
    method.attach(model)
    with torch.no_grad():
        for group in method.groups:
            group.scale.copy_(torch.rand(group.size) + 0.1)
    x = torch.randn(1, 3, 16, 16)
    method.select(model, x)
    narrow = method.prune(model)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in model.parameters())
    deployment = deploy(narrow, x, tmp_path / "deployed.pt2", timer=no_timer)  # no sparse weights: nothing timed
    assert deployment.status == "exported" and deployment.kernels == {}
    loads_and_matches_without_sparse_lab(tmp_path / "deployed.pt2", narrow, x, tmp_path)


class ThreeLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 8)
        with torch.no_grad():
            self.a.weight.mul_(torch.rand_like(self.a.weight) >= 0.95)
            self.b.weight.mul_(torch.rand_like(self.b.weight) >= 0.95)
            self.c.weight.mul_(torch.rand_like(self.c.weight) >= 0.3)  # too dense to be timed

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def fake_timer(table):
    """Seconds per (layer, batch size): dense and csr, from ``table``; records what was timed."""
    timed = []

    def timer(name, calls):
        batch = calls["dense"].args[0].shape[0]  # the timed call's input
        timed.append((name, batch))
        return table[name, batch]

    return timer, timed


def test_csr_is_chosen_only_where_measured_faster_at_every_batch_size():
    torch.manual_seed(0)
    model = ThreeLinears().eval()
    table = {
        ("a", 1): {"dense": 1.0, "csr": 0.5},
        ("a", 8): {"dense": 1.0, "csr": 0.6},  # faster at both batch sizes: csr
        ("b", 1): {"dense": 1.0, "csr": 0.5},
        ("b", 8): {"dense": 1.0, "csr": 1.2},  # slower at batch 8: dense
    }
    timer, timed = fake_timer(table)
    choices = choose_kernels(model, [torch.randn(1, 64), torch.randn(8, 64)], torch.device("cpu"), timer)
    assert sorted(timed) == sorted(table)  # c (30% zeros) is never timed
    assert choices["a"]["kernel"] == "csr" and choices["b"]["kernel"] == "dense" and "c" not in choices
    assert choices["a"]["dense_ms"] == [1000.0, 1000.0] and choices["a"]["csr_ms"] == [500.0, 600.0]
    # Within the noise margin is not faster: equal times keep dense.
    timer, _ = fake_timer({k: {"dense": 1.0, "csr": 0.95} for k in table})
    assert all(r["kernel"] == "dense" for r in choose_kernels(model, [torch.randn(1, 64)], "cpu", timer).values())

    fast = with_kernels(model, choices, torch.device("cpu"))
    assert isinstance(fast.a, CsrLinear) and isinstance(fast.b, nn.Linear)
    x = torch.randn(5, 3, 64)
    torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_sparse_kernel_that_cannot_be_exported_falls_back_to_dense_with_the_reason(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = ThreeLinears()
    monkeypatch.setattr(deploy_module, "kernel_export_problem", lambda device: None)  # pretend it can: try it
    timer, _ = fake_timer({(n, 1): {"dense": 1.0, "csr": 0.1} for n in "ab"})
    x = torch.randn(1, 64)
    deployment = deploy(model, x, tmp_path / "deployed.pt2", timer=timer)
    assert deployment.status == "exported"
    for name in "ab":
        row = deployment.kernels[name]
        if row["kernel"] == "dense":  # torch 2.14: torch.export cannot save a CSR weight
            assert row["reason"].startswith("chosen (csr faster) but not exportable: torch.export")
        else:
            assert isinstance(deployment.module.get_submodule(name), nn.Module)
    torch.testing.assert_close(deployment.module(x), model.eval()(x), atol=1e-5, rtol=1e-5)


def test_gates_prune_reparametrizations_and_hooks_are_folded_away():
    model = masked_vit(sparsity=0.5)
    method = build_method("masksparsity", ratio=0.3)
    method.attach(model)  # adds gates to every head and MLP unit
    with torch.no_grad():
        for group in method.groups:
            group.scale.copy_(torch.rand(group.size) + 0.5)
    torch.nn.utils.prune.l1_unstructured(model.head, "weight", amount=0.5)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        expected = model.eval()(x)
    model.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: o * 0)  # a hook left behind by a callback
    copy, folded = inference_copy(model)
    assert not copy.training
    assert all(getattr(m, "gate", None) is None for m in copy.modules())
    assert "head.weight" in folded["prune_reparametrizations"] and not hasattr(copy.head, "weight_orig")
    assert folded["hooks"] == ["blocks.0.mlp.fc1"] and len(folded["gates"]) == 4
    with torch.no_grad():
        torch.testing.assert_close(copy(x), expected, atol=1e-5, rtol=1e-5)
    assert any(getattr(m, "gate", None) is not None for m in model.modules())  # the original is untouched


def test_spconv_model_is_recorded_as_not_exported():
    torch.manual_seed(0)
    model = build_model(
        "e3dsnn", modality="point_cloud", num_classes=5, in_chans=4, grid_size=16, embed_dim=8, channels=[8, 16]
    )
    batch = voxelize(torch.rand(1, 64, 3) * 1.6 - 0.8, voxel_size=0.125)
    deployment = deploy(model, batch, "unused.pt2")
    assert deployment.status == "not exported" and deployment.reason.startswith("torch.export: ")
    assert deployment.record()["path"] is None and not os.path.exists("unused.pt2")
    with torch.no_grad():  # the inference copy is what gets timed
        torch.testing.assert_close(deployment.module(batch), model.eval()(batch))


def test_run_writes_the_deployed_program_and_latency_metrics(make_cfg, tmp_path):
    cfg = make_cfg("model=vit", "model.preset=tiny", "sparsity=nm24", "data.batch_size=16")
    results = run(cfg, tmp_path)
    metrics = results["metrics"]
    for key in ("latency/dense_ms", "latency/deployed_ms", "latency/dense_ms_b16", "latency/deployed_ms_b16"):
        assert metrics[key] > 0
    assert metrics["speedup/measured"] == pytest.approx(metrics["latency/dense_ms"] / metrics["latency/deployed_ms"])
    assert metrics["speedup/macs"] == pytest.approx(1.0)  # N:M on dense CPU kernels: no MAC is skipped
    assert metrics["speedup/realised"] == pytest.approx(metrics["speedup/measured"])
    deployed = results["deployed"]
    assert deployed["status"] == "exported" and "hooks" not in deployed["folded"]  # N:M removed its hooks
    assert (tmp_path / "deployed.pt2").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["deployed"]["status"] == "exported"
    program = torch.export.load(str(tmp_path / "deployed.pt2")).module()
    assert program(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
