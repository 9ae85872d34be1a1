"""`sparse-lab report`: hand-made results.json files -> groups, statistics, paired verdicts, files, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from sparse_lab.report import (
    build_report,
    group_runs,
    load_run,
    paired_comparisons,
    pareto_front,
    summarize,
    t_cdf_abs,
    t_quantile,
)
from tests.conftest import run_cli


def config(seed: int, method: str = "random", sparsity: float | None = 0.9, data: str = "digits", model: str = "vit"):
    sparsity_cfg = {"name": method, "distribution": "erk"}
    if sparsity is not None:
        sparsity_cfg["sparsity"] = sparsity
    return {
        "seed": seed,
        "data": {"name": data, "batch_size": 64},
        "model": {"_target_": f"my_models.{model.upper()}", "depth": 2},
        "sparsity": sparsity_cfg,
        "hardware": {"name": "cpu", "energy_pj_per_mac": 4.6},
        "trainer": {"max_epochs": 1},
        "paths": {"data_dir": "data", "output_dir": f"outputs/seed{seed}"},
    }


def write_run(root: Path, name: str, cfg: dict, metrics: dict | None = None, status="completed", error=None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    results = {"status": status, "error": error, "run_dir": str(run_dir), "config": cfg, "metrics": metrics or {}}
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def acc_metrics(acc: float, sparsity: float = 0.9, macs_target: float = 1e6, **extra) -> dict:
    return {
        "test/acc": acc,
        "sparsity/global": sparsity,
        "macs/dense": 1e7,
        "macs/target": macs_target,
        "params/total": 1000,
        "params/nonzero": 100,
        "energy/uJ": 4.6,
        **extra,
    }


def sweep(root: Path, method: str, accs: list[float], sparsity: float = 0.9) -> None:
    for seed, acc in enumerate(accs):
        cfg = config(seed, method, sparsity)
        write_run(root, f"{method}_{sparsity}_s{seed}", cfg, acc_metrics(acc, sparsity if method != "dense" else 0.0))


def runs_below(root: Path):
    return [load_run(p) for p in sorted(root.rglob("results.json"))]


# ------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def test_t_cdf_limits_and_large_df_tends_to_normal():
    assert t_cdf_abs(0.0, 5) == 0.0
    assert t_cdf_abs(1e9, 7) == pytest.approx(1.0)
    assert t_quantile(0.975, 1000) == pytest.approx(1.962, abs=1e-3)


def test_summary_matches_hand_computation():
    s = summarize([0.80, 0.82, 0.84])
    assert s.n == 3
    assert s.mean == pytest.approx(0.82)
    assert s.std == pytest.approx(0.02)
    half = 4.303 * 0.02 / math.sqrt(3)
    assert s.ci[0] == pytest.approx(0.82 - half, abs=1e-4)
    assert s.ci[1] == pytest.approx(0.82 + half, abs=1e-4)
    single = summarize([0.5])
    assert single.mean == 0.5 and single.std is None and single.ci is None


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.8), (4.0, 0.7), (5.0, 0.9)]
    assert pareto_front(pts, higher_is_better=True) == [(1.0, 0.5), (3.0, 0.8), (5.0, 0.9)]
    assert pareto_front(pts, higher_is_better=False) == [(1.0, 0.5), (2.0, 0.4)]


# ------------------------------------------------------------------------------------------- grouping


def test_runs_differing_only_in_seed_and_paths_form_one_group(tmp_path):
    sweep(tmp_path, "set", [0.80, 0.82, 0.84])
    sweep(tmp_path, "set", [0.70, 0.71], sparsity=0.5)  # another sparsity level: its own group
    groups = group_runs(runs_below(tmp_path))
    assert [len(g.runs) for g in groups] == [3, 2] or [len(g.runs) for g in groups] == [2, 3]
    big = next(g for g in groups if len(g.runs) == 3)
    assert big.summary().mean == pytest.approx(0.82)
    assert big.summary().std == pytest.approx(0.02)
    assert big.first.name("model") == "vit"  # from _target_
    labels = {g.label for g in groups}
    assert len(labels) == 2 and all(label.startswith("digits/vit/set/cpu") for label in labels)
    assert any("sparsity.sparsity=0.5" in label for label in labels)


def test_failed_run_is_listed_not_averaged(tmp_path):
    sweep(tmp_path, "set", [0.80, 0.82, 0.84])
    write_run(tmp_path, "set_s3", config(3, "set"), {"test/acc": 0.0}, status="failed", error="RuntimeError: CUDA OOM")
    report = build_report([tmp_path])
    (group,) = report.groups
    assert len(group.runs) == 3 and group.summary().mean == pytest.approx(0.82)
    md = (tmp_path / "report.md").read_text()
    failed_section = md.split("## Failed runs")[1].split("## Paired")[0]
    assert "set_s3" in failed_section and "RuntimeError: CUDA OOM" in failed_section
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert {r["status"] for r in rows} == {"completed", "failed"}


def test_scene_flow_run_gets_its_own_group_lower_is_better(tmp_path):
    sweep(tmp_path, "set", [0.80, 0.82])
    for seed, epe in enumerate([0.12, 0.14]):
        cfg = config(seed, "set", data="flow3d", model="sctn")
        write_run(tmp_path, f"flow_s{seed}", cfg, {"test/epe3d": epe, "sparsity/global": 0.9, "macs/target": 5e5})
    report = build_report([tmp_path])
    assert len(report.groups) == 2
    flow = next(g for g in report.groups if g.primary == "test/epe3d")
    assert not flow.higher_is_better and flow.summary().mean == pytest.approx(0.13)
    md = (tmp_path / "report.md").read_text()
    assert "test/epe3d (lower is better)" in md and "test/acc (higher is better)" in md
    assert (tmp_path / "pareto_epe3d.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------- paired comparisons


def test_paired_clear_difference_names_a_winner(tmp_path):
    sweep(tmp_path, "set", [0.80, 0.82, 0.84])
    sweep(tmp_path, "rigl", [0.70, 0.71, 0.73])
    (cmp,) = paired_comparisons(group_runs(runs_below(tmp_path)))
    winner = cmp.a if cmp.verdict == "A better" else cmp.b
    assert cmp.verdict in ("A better", "B better")
    assert winner.first.name("sparsity") == "set"
    assert sorted(abs(d) for d in cmp.diffs) == pytest.approx([0.10, 0.11, 0.11])


def test_paired_noise_is_not_distinguishable(tmp_path):
    sweep(tmp_path, "set", [0.80, 0.82, 0.84])
    sweep(tmp_path, "rigl", [0.81, 0.81, 0.85])
    (cmp,) = paired_comparisons(group_runs(runs_below(tmp_path)))
    assert cmp.verdict == "not distinguishable"
    assert cmp.summary.ci[0] < 0 < cmp.summary.ci[1]


def test_paired_against_dense_and_lower_is_better(tmp_path):
    # dense is always comparable (B); for epe3d the lower one wins
    for method, epes in (("dense", [0.20, 0.21, 0.22]), ("set", [0.10, 0.12, 0.11])):
        for seed, epe in enumerate(epes):
            sp = 0.0 if method == "dense" else 0.9
            write_run(tmp_path, f"{method}_s{seed}", config(seed, method), {"test/epe3d": epe, "sparsity/global": sp})
    (cmp,) = paired_comparisons(group_runs(runs_below(tmp_path)))
    assert cmp.b.first.name("sparsity") == "dense"
    assert cmp.verdict == "A better"
    assert cmp.summary.mean == pytest.approx(-0.1, abs=1e-9)


def test_no_pair_at_different_sparsity_or_seeds(tmp_path):
    sweep(tmp_path, "set", [0.80, 0.82, 0.84], sparsity=0.9)
    sweep(tmp_path, "rigl", [0.70, 0.71, 0.73], sparsity=0.5)
    assert paired_comparisons(group_runs(runs_below(tmp_path))) == []


# ------------------------------------------------------------------------------------------- files and CLI


def test_files_written(tmp_path):
    sweep(tmp_path / "sweep", "set", [0.80, 0.82, 0.84])
    sweep(tmp_path / "sweep", "rigl", [0.70, 0.71, 0.73])
    out = tmp_path / "out"
    report = build_report([tmp_path / "sweep"], out=out)
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 6
    assert {"run_dir", "seed", "value", "sparsity/global", "macs/target", "energy/uJ"} <= set(rows[0])
    assert {r["sparsity"] for r in rows} == {"set", "rigl"} and {r["model"] for r in rows} == {"vit"}
    md = (out / "report.md").read_text()
    assert "digits/vit/set/cpu" in md and "Paired comparisons" in md
    assert "B better |" in md  # A = rigl (sorted first), B = set: set wins
    for name in ("pareto_acc.png", "sparsity_acc.png"):
        assert (out / name).stat().st_size > 0
        assert out / name in report.files
    assert not (tmp_path / "sweep" / "report.csv").exists()


@pytest.mark.e2e
def test_cli_report_prints_table(tmp_path):
    sweep(tmp_path, "set", [0.80, 0.82, 0.84])
    sweep(tmp_path, "rigl", [0.70, 0.71, 0.73])
    proc = run_cli("report", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "digits/vit/set/cpu" in proc.stdout and "digits/vit/rigl/cpu" in proc.stdout
    assert "0.82 ± 0.02" in proc.stdout
    assert (tmp_path / "report.md").exists()


@pytest.mark.e2e
def test_cli_report_empty_folder_exits_2_with_one_line(tmp_path):
    proc = run_cli("report", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "no results.json" in proc.stderr
