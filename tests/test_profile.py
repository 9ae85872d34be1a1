"""`sparse-lab profile`: a model's per-layer cost on a target, without training."""

import json

import pytest
import torch

from sparse_lab.cli import CONFIG_DIR
from sparse_lab.errors import UserError
from sparse_lab.experiment import run
from sparse_lab.measure import count_macs
from sparse_lab.models import build_model
from sparse_lab.profile import profile
from tests.conftest import run_cli


def test_a_config_is_built_as_train_builds_it_with_the_sizes_it_names():
    # ViT-Ti/16 at 224 (ViT-B/16: tests/measure/test_torchvision_macs.py, same counter, 14x the MACs).
    overrides = ["model=vit", "model.preset=vit_ti16", "data.image_size=224", "data.num_classes=1000"]
    result = profile(CONFIG_DIR, overrides)
    model = build_model("vit", modality="image", num_classes=1000, image_size=224, in_chans=3, preset="vit_ti16")
    assert result["macs/dense"] == count_macs(model, torch.zeros(1, 3, 224, 224)).dense
    assert 1.25e9 < result["macs/dense"] < 1.27e9  # timm's vit_tiny_patch16_224: 1.26 GMACs
    assert result["params/total"] == 5_717_416  # timm's vit_tiny_patch16_224
    assert sum(row["macs_dense"] for row in result["layers"]) == result["macs/dense"]


def test_the_target_decides_what_the_initial_masks_save():
    on_cpu = profile(CONFIG_DIR, ["sparsity=random", "hardware=cpu"])
    on_ideal = profile(CONFIG_DIR, ["sparsity=random", "hardware=ideal"])
    assert on_cpu["macs/dense"] == on_ideal["macs/dense"] == on_cpu["macs/target"]
    assert on_ideal["macs/target"] == on_ideal["macs/effective"] < 0.5 * on_ideal["macs/dense"]  # 80% ERK
    assert on_ideal["energy/uJ"] == pytest.approx(on_ideal["macs/target"] * 4.6e-6)


def test_a_missing_or_foreign_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no results.json"):
        profile(CONFIG_DIR, [f"run={tmp_path}"])
    (tmp_path / "results.json").write_text("not json")
    with pytest.raises(UserError, match="not a sparse-lab results file"):
        profile(CONFIG_DIR, [f"run={tmp_path}"])


@pytest.mark.e2e
def test_cli_prints_json_and_rejects_a_bad_option_in_one_line(tmp_path):
    done = run_cli("profile", "model=mobilenet_v2", "hardware=ideal", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["hardware"] == "ideal" and result["macs/dense"] == 7_837_440
    bad = run_cli("profile", "hardware=tpu", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown hardware 'tpu'" in bad.stderr


def test_a_trained_runs_deployed_model_is_profiled_on_any_target(make_cfg, tmp_path):
    cfg = make_cfg("model=vit", "model.preset=tiny", "sparsity=random", "deploy.export=true")
    metrics = run(cfg, tmp_path)["metrics"]
    on_cpu = profile(CONFIG_DIR, [f"run={tmp_path}"])  # the run's own target
    on_ideal = profile(CONFIG_DIR, [f"run={tmp_path}", "hardware=ideal"])
    assert on_cpu["source"].endswith("(deployed.pt2)") and on_ideal["hardware"] == "ideal"
    assert on_cpu["macs/dense"] == on_ideal["macs/dense"] == metrics["macs/dense"]  # the same model, counted alike
    assert on_ideal["macs/target"] == metrics["macs/effective"] < on_cpu["macs/target"]
    assert {row["name"] for row in on_ideal["layers"]} >= {"patch_embed.proj", "head"}  # attributed to layers
