"""The deployed model: folded, exported, loadable with torch alone, faster kernels only where measured faster."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lab.cli import CONFIG_DIR
from sparse_lab.data import DATASETS
from sparse_lab.data.points import voxelize
from sparse_lab.experiment import check_datamodule, options, run
from sparse_lab.hardware import deploy as deploy_module
from sparse_lab.hardware.deploy import CsrLinear, choose_kernels, deploy, inference_copy, with_kernels
from sparse_lab.models import build_model, model_from_config
from sparse_lab.sparsity import build_method
from sparse_lab.spconv_layout import is_sparse_conv
from tests.models.test_e3dsnn import tiny_model

# Runs in a fresh interpreter that refuses sparse_lab (an editable install puts it on every path):
# the program must load and compute with torch alone.
LOAD_WITHOUT_SPARSE_LAB = """
import sys
sys.modules["sparse_lab"] = None  # any `import sparse_lab...` now raises ImportError
sys.path = [p for p in sys.path if p and p.rstrip("/") != {repo!r}]  # the checkout (the venv inside stays)
try:
    import sparse_lab  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("sparse_lab importable")
import torch
for program, reference in zip(sys.argv[1::2], sys.argv[2::2]):
    ref = torch.load(reference, weights_only=True)
    out = torch.export.load(program).module()(ref["input"])
    assert torch.allclose(out, ref["output"], atol=1e-5), (program, (out - ref["output"]).abs().max())
print("match")
"""
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loads_and_match_without_sparse_lab(programs: list[tuple], tmp_path) -> None:
    """Each ``(program path, model, input)``: the program, loaded in a fresh interpreter that cannot import
    sparse_lab, computes what the model computes (one interpreter for all: starting torch takes seconds)."""
    args = []
    for i, (path, model, x) in enumerate(programs):
        with torch.no_grad():
            torch.save({"input": x, "output": model.eval()(x)}, tmp_path / f"reference{i}.pt")
        args += [str(path), str(tmp_path / f"reference{i}.pt")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = LOAD_WITHOUT_SPARSE_LAB.format(repo=REPO)
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
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


def masksparsity_narrowed_mobilenet():
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
    return narrow, x


def test_deployed_programs_load_without_sparse_lab_and_match(tmp_path):
    vit, x_vit = masked_vit(), torch.randn(1, 1, 16, 16)
    deployment = deploy(vit, x_vit, tmp_path / "vit.pt2", batch_input=x_vit.repeat(4, 1, 1, 1))
    assert deployment.status == "exported" and deployment.reason is None
    assert (tmp_path / "vit.pt2").is_file() and deployment.max_abs_diff < 1e-5
    # Dynamic batch: the same program at another batch size computes what the model computes.
    xb = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(deployment.module(xb), vit.eval()(xb), atol=1e-5, rtol=1e-5)
    # Every sparse enough linear layer is recorded with its kernel (dense on the CPU, with the reason).
    linears = [n for n, m in vit.named_modules() if isinstance(m, nn.Linear) and n != "head"]
    assert set(linears) <= set(deployment.kernels)
    for row in deployment.kernels.values():
        assert row["kernel"] in ("dense", "csr") and (row["kernel"] == "csr" or row.get("reason"))

    narrow, x_mobilenet = masksparsity_narrowed_mobilenet()
    deployment = deploy(narrow, x_mobilenet, tmp_path / "mobilenet.pt2", timer=no_timer)  # no sparse weights
    assert deployment.status == "exported" and deployment.kernels == {}

    loads_and_match_without_sparse_lab(
        [(tmp_path / "vit.pt2", vit, x_vit), (tmp_path / "mobilenet.pt2", narrow, x_mobilenet)], tmp_path
    )


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
    model = tiny_model()
    batch = voxelize(torch.rand(1, 64, 3) * 1.6 - 0.8, voxel_size=0.125)
    deployment = deploy(model, batch, "unused.pt2")
    assert deployment.status == "not exported" and deployment.reason.startswith("torch.export: ")
    assert "layers from spconv" in deployment.reason
    assert deployment.record()["path"] is None and not os.path.exists("unused.pt2")
    with torch.no_grad():  # the inference copy is what gets timed
        torch.testing.assert_close(deployment.module(batch), model.eval()(batch))


@dataclasses.dataclass
class Pair:
    a: torch.Tensor
    b: torch.Tensor
    scale: float


class PairModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, pair: Pair) -> torch.Tensor:
        return self.fc(pair.a * pair.scale + pair.b)


def test_a_dataclass_input_is_exported_as_its_tensor_fields(tmp_path):
    model, pair = PairModel(), Pair(torch.randn(3, 4), torch.randn(3, 4), 2.0)
    deployment = deploy(model, pair, tmp_path / "deployed.pt2")
    assert deployment.status == "exported"
    torch.testing.assert_close(deployment.module(pair), model(pair))  # called as the model is
    program = torch.export.load(str(tmp_path / "deployed.pt2")).module()  # the file takes plain tensors
    torch.testing.assert_close(program(pair.a, pair.b), model(pair))


def test_run_writes_the_deployed_program_and_latency_metrics(make_cfg, tmp_path, capsys):
    cfg = make_cfg(
        "model=vit",
        "model.preset=tiny",
        "sparsity=nm24",
        "data.batch_size=16",
        "deploy.export=true",
        "deploy.latency=true",
    )
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
    table = capsys.readouterr().out  # the summary table printed at the end of the run
    assert "latency dense / deployed, batch 16 (ms)" in table and "deployed program" in table
    program = torch.export.load(str(tmp_path / "deployed.pt2")).module()
    assert program(torch.zeros(2, 3, 32, 32)).shape == (2, 10)  # digits: RGB 32x32, 10 classes


def test_masksparsity_round_to_keeps_multiples_of_8_channels_per_group():
    """The deployment-speed option of MaskSparsity (sparsity.round_to): SIMD-friendly kept counts."""
    selected = {}
    for round_to in (1, 8):
        pl.seed_everything(0, verbose=False)
        model = build_model("mobilenet_v2", modality="image", num_classes=5, image_size=32, in_chans=3)
        method = build_method("masksparsity", ratio=0.5, target="flops", round_to=round_to)
        method.attach(model)
        generator = torch.Generator().manual_seed(0)  # the same scores for both
        with torch.no_grad():
            for group in method.groups:
                group.scale.copy_(torch.rand(group.size, generator=generator))
        selected[round_to] = method.select(model, torch.zeros(1, 3, 32, 32))
        kept = [g.size - len(selected[round_to][g.name]) for g in method.groups]
        assert all(k >= 1 for k in kept)
    assert any(k % 8 for k in [g.size - len(selected[1][g.name]) for g in method.groups])  # rounding changes it
    for g in method.groups:
        assert g.size % 8 == 0 and (g.size - len(selected[8][g.name])) % 8 == 0
        # The lowest-scored channels go, as without rounding: one selection contains the other.
        small, large = sorted((set(selected[1][g.name].tolist()), set(selected[8][g.name].tolist())), key=len)
        assert small <= large
    assert method.details()["round_to"] == 8


MODEL_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_family_exports_or_says_why(name, make_cfg, tmp_path):
    """As built from its config (tiny preset where it has presets), on its default data."""
    cfg = make_cfg(f"model={name}")
    if "preset" in cfg.model:
        cfg = make_cfg(f"model={name}", "model.preset=tiny")
    datamodule = DATASETS.from_config(options(cfg.data))
    info = check_datamodule(datamodule)
    model = model_from_config(options(cfg.model, drop=("optim",)), info).eval()
    deployment = deploy(model, datamodule.example_input(), tmp_path / "deployed.pt2")
    spconv_layers = any(is_sparse_conv(m) for m in model.modules())
    if spconv_layers:  # spconv's kernels are not aten operators: recorded, not a failed run
        assert deployment.status == "not exported" and "spconv" in deployment.reason
        assert not (tmp_path / "deployed.pt2").exists()
    else:
        assert deployment.status == "exported" and deployment.max_abs_diff <= 1e-4
        assert (tmp_path / "deployed.pt2").is_file()
