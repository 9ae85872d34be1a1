"""`sparse-lab report`: hand-made results.json files -> groups, statistics, paired verdicts, files, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from sparse_lab import test_items
from sparse_lab.report import (
    build_report,
    density_matrices,
    group_runs,
    load_run,
    paired_comparisons,
    pareto_front,
    summarize,
    summarize_paired,
    t_cdf_abs,
    t_quantile,
)
from sparse_lab.report import main as report_main
from sparse_lab.report.wandb_log import target as wandb_target
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


def test_a_running_run_whose_process_is_gone_reads_killed(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name, pid in (("killed", int(gone.stdout)), ("alive", os.getpid())):
        run_dir = write_run(tmp_path, name, config(0, name), status="running")
        data = json.loads((run_dir / "results.json").read_text())
        (run_dir / "results.json").write_text(json.dumps({**data, "pid": pid, "host": socket.gethostname()}))
    statuses = {r.path.name: (r.status, r.error) for r in runs_below(tmp_path)}
    assert statuses["alive"] == ("running", None)
    assert statuses["killed"][0] == "killed" and "resume=" in statuses["killed"][1]


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


def items_sweep(root: Path, method: str, correct: list[np.ndarray], labels: np.ndarray) -> None:
    """Runs whose test items are recorded as the experiment writes them (sparse_lab.test_items)."""
    for seed, right in enumerate(correct):
        run_dir = write_run(root, f"{method}_s{seed}", config(seed, method), acc_metrics(float(right.mean())))
        results = json.loads((run_dir / "results.json").read_text())
        results["test_items"] = test_items.save(run_dir, "test/acc", right.astype(np.uint8), labels)
        (run_dir / "results.json").write_text(json.dumps(results))


def test_one_test_image_per_seed_is_not_a_win_once_the_test_set_is_counted(tmp_path):
    # digits' 269 test images: B gets the same single image wrong at every seed, all else alike. The seeds
    # agree exactly (std 0), so over seeds alone the interval collapses onto +0.37 points and calls A better.
    labels = np.arange(269) % 10
    rng = np.random.default_rng(0)
    base = [rng.random(269) < 0.95 for _ in range(3)]
    for right in base:
        right[0] = True
    worse = [right.copy() for right in base]
    for right in worse:
        right[0] = False
    items_sweep(tmp_path / "a", "set", base, labels)
    items_sweep(tmp_path / "b", "rigl", worse, labels)
    (cmp,) = paired_comparisons(group_runs(runs_below(tmp_path)))
    assert cmp.summary.items == 269 and cmp.summary.over() == "3 seeds + 269 test items"
    assert cmp.summary.mean == pytest.approx(1 / 269 * (1 if cmp.a.first.name("sparsity") == "set" else -1))
    assert cmp.verdict == "not distinguishable"
    seeds_only = summarize(cmp.diffs)
    assert seeds_only.ci[0] == seeds_only.ci[1] == pytest.approx(cmp.summary.mean)  # what seeds alone say

    (tmp_path / "b" / "rigl_s2" / "test_items.npz").write_bytes(b"not numpy")  # unreadable: seeds only again
    (cmp,) = paired_comparisons(group_runs(runs_below(tmp_path)))
    assert cmp.summary.items is None and cmp.verdict != "not distinguishable"


def test_items_of_different_test_sets_are_not_paired(tmp_path):
    rng = np.random.default_rng(1)
    items_sweep(tmp_path / "a", "set", [rng.random(50) < 0.9 for _ in range(3)], np.arange(50) % 10)
    items_sweep(tmp_path / "b", "rigl", [rng.random(50) < 0.8 for _ in range(3)], np.arange(50) % 5)
    (cmp,) = paired_comparisons(group_runs(runs_below(tmp_path)))
    assert cmp.summary.items is None


def test_the_item_term_widens_the_seed_interval_and_vanishes_without_item_noise():
    diffs = [0.02, 0.03, 0.025]
    seeds = summarize(diffs)
    assert summarize_paired(diffs, np.zeros(1000) + 0.025).ci == pytest.approx(seeds.ci)  # no item spread
    noisy = np.r_[np.ones(100), -np.ones(75), np.zeros(825)]  # mean 0.025, spread over items
    both = summarize_paired(diffs, noisy)
    half, half_seeds = both.ci[1] - both.mean, seeds.ci[1] - seeds.mean
    item_se = noisy.std(ddof=1) / math.sqrt(len(noisy))
    assert half > half_seeds and half > 1.96 * item_se and both.items == 1000
    assert half == pytest.approx(
        math.sqrt(half_seeds**2 + (1.96 * item_se) ** 2), rel=0.25
    )  # roughly the two errors added in quadrature (each with its own t quantile)
    # A small, well-estimated item term raises the degrees of freedom (t 4.30 -> ~2.1) more than the variance:
    # the combined interval would be narrower than the seeds' own, and the seeds' is kept.
    few = np.r_[np.ones(20), np.zeros(980)]
    assert summarize_paired(diffs, few).ci == pytest.approx(seeds.ci)
    # Items that fail together (10 renderings of each source) are fewer independent items: a wider interval.
    clustered = summarize_paired(diffs, np.repeat(noisy[::10], 10), groups=np.arange(1000) // 10)
    independent = summarize_paired(diffs, np.repeat(noisy[::10], 10))
    assert clustered.ci[1] - clustered.mean > 1.5 * (independent.ci[1] - independent.mean)


def test_no_pair_at_different_sparsity_or_seeds(tmp_path):
    sweep(tmp_path, "set", [0.80, 0.82, 0.84], sparsity=0.9)
    sweep(tmp_path, "rigl", [0.70, 0.71, 0.73], sparsity=0.5)
    assert paired_comparisons(group_runs(runs_below(tmp_path))) == []


# ------------------------------------------------------------------------------------------- files and CLI


def test_files_written(tmp_path):
    sweep(tmp_path / "sweep", "set", [0.80, 0.82, 0.84])
    for seed, val in enumerate((0.5, 0.6, 0.7)):  # the last validation epoch, where runs recorded it
        path = tmp_path / "sweep" / f"set_0.9_s{seed}" / "results.json"
        results = json.loads(path.read_text())
        results["metrics"]["val/acc"] = val
        path.write_text(json.dumps(results))
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
    assert "| 0.6 |" in md and {r["val/acc"] for r in rows} == {"0.5", "0.6", "0.7", ""}
    for name in ("pareto_acc.png", "sparsity_acc.png"):
        assert (out / name).stat().st_size > 0
        assert out / name in report.files
    assert not (tmp_path / "sweep" / "report.csv").exists()


def test_no_plots_writes_the_tables_only(tmp_path, capsys):
    sweep(tmp_path / "sweep", "set", [0.80, 0.82, 0.84])
    assert report_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.csv", "report.md"]
    assert "0.82 ± 0.02" in capsys.readouterr().out


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


# ------------------------------------------------------------------------------------------- per-layer density


def layers(**densities: float) -> list[dict]:
    """results.json "layers" rows: name -> density of a 100-weight layer."""
    return [
        dict(name=name, shape=[10, 10], numel=100, nonzero=round(100 * d), density=d, target_density=d)
        for name, d in densities.items()
    ]


def write_layered(root: Path, model: str, method: str, seed: int, rows: list[dict], wandb: dict | None = None):
    run_dir = write_run(root, f"{model}_{method}_s{seed}", config(seed, method, model=model), acc_metrics(0.8))
    data = json.loads((run_dir / "results.json").read_text())
    data.update(layers=rows, **({"wandb": wandb} if wandb else {}))
    (run_dir / "results.json").write_text(json.dumps(data))


def layered_sweep(root: Path, wandb: dict | None = None) -> None:
    """vit: dense, random (two seeds: densities averaged), set (lacks fc2); mobilenet_v2: other layers."""
    write_layered(root, "vit", "dense", 0, layers(qkv=1.0, fc1=1.0, fc2=1.0), wandb)
    write_layered(root, "vit", "random", 0, layers(qkv=0.1, fc1=0.2, fc2=0.3), wandb)
    write_layered(root, "vit", "random", 1, layers(qkv=0.3, fc1=0.2, fc2=0.5), wandb)
    write_layered(root, "vit", "set", 0, layers(fc1=0.4, qkv=0.6), wandb)
    write_layered(root, "mobilenet_v2", "random", 0, layers(conv1=0.5, dw=1.0), wandb)


def test_density_matrix_per_model_rows_layers_columns_groups_mean_over_seeds(tmp_path):
    layered_sweep(tmp_path)
    write_run(tmp_path, "no_layers", config(0, "rigl", model="vit"), acc_metrics(0.7))  # old run: no column
    mobilenet, vit = density_matrices(group_runs(runs_below(tmp_path)))
    assert (vit.model, vit.filename, mobilenet.filename) == ("vit", "density_vit.png", "density_mobilenet_v2.png")
    assert vit.columns == ["dense", "random", "set"]  # data and hardware are the same: the method alone
    assert vit.layers == ["qkv", "fc1", "fc2"]  # network order, set's own order does not reorder them
    expected = [[1.0, 0.2, 0.6], [1.0, 0.2, 0.4], [1.0, 0.4, None]]  # random: mean of its two seeds
    assert [[pytest.approx(v) if v is not None else None for v in row] for row in vit.values] == expected
    assert [len(g.runs) for g in vit.groups] == [1, 2, 1]
    assert mobilenet.layers == ["conv1", "dw"] and mobilenet.values == [[0.5], [1.0]]


def test_density_heatmaps_written_and_listed_skipped_without_layers(tmp_path):
    layered_sweep(tmp_path / "sweep")
    report = build_report([tmp_path / "sweep"], out=tmp_path / "out")
    assert [p.name for p in report.heatmaps] == ["density_mobilenet_v2.png", "density_vit.png"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Per-layer density" in md and "(density_vit.png)" in md and "(density_mobilenet_v2.png)" in md
    for path in report.heatmaps:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path in report.files

    sweep(tmp_path / "plain", "set", [0.80, 0.82])  # no run has layer rows: no heatmap, no section
    plain = build_report([tmp_path / "plain"])
    assert plain.heatmaps == [] and not list((tmp_path / "plain").glob("density_*"))
    assert "Per-layer density" not in (tmp_path / "plain" / "report.md").read_text()


# ------------------------------------------------------------------------------------------- W&B


def test_wandb_target_is_the_runs_group_else_the_sweep_folder(tmp_path):
    layered_sweep(tmp_path / "12-00-00")  # runs that did not log to W&B
    runs = runs_below(tmp_path)
    plain = wandb_target(runs)
    assert (plain.project, plain.group) == ("sparse-lab", "12-00-00")  # configs/logger/wandb.yaml; folder name
    assert wandb_target(runs, project="mine").project == "mine"
    for run in runs:
        run.wandb = {"project": "theirs", "group": "sweep-a", "job_type": "set", "id": "x"}
    assert (wandb_target(runs).project, wandb_target(runs).group) == ("theirs", "sweep-a")
    runs[0].wandb = {**runs[0].wandb, "group": "sweep-b"}  # two groups: the folder again
    assert wandb_target(runs).group == "12-00-00"


def test_cli_wandb_logs_an_offline_report_run_in_the_sweeps_group(tmp_path, monkeypatch, capsys):
    from sparse_lab.cli import main
    from tests.test_loggers import offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")  # as resolve_wandb_mode("auto") picks without a login
    wandb = {"project": "sparse-lab-test", "group": "00-37-48", "job_type": "random", "id": "abc", "mode": "offline"}
    layered_sweep(tmp_path / "sweep", wandb)
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "sweep"), "--out", str(out), "--wandb"]) == 0
    printed = capsys.readouterr().out
    assert "W&B: offline run" in printed and "group 00-37-48" in printed and str(out / "wandb") in printed

    run = offline_run(out)
    assert (run["project"], run["group"], run["job_type"]) == ("sparse-lab-test", "00-37-48", "report")
    assert {"report.runs", "report.groups", "report.run_ids"} <= run["config_keys"]
    (table_file,) = run["dir"].glob("files/media/table/groups_*.table.json")
    table = json.loads(table_file.read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [(r["model"], r["method"], r["n"]) for r in rows] == [
        ("mobilenet_v2", "random", 1),
        ("vit", "dense", 1),
        ("vit", "random", 2),
        ("vit", "set", 1),
    ]
    assert rows[2]["mean"] == pytest.approx(0.8) and rows[2]["metric"] == "test/acc"
    images = {p.name.split("_0_")[0] for p in run["dir"].glob("files/media/images/plots/*.png")}
    assert {"density_vit", "density_mobilenet_v2", "pareto_acc", "sparsity_acc"} <= images


def test_report_help_names_the_options(capsys):
    from sparse_lab.cli import main

    assert main(["report", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--wandb" in text and "--wandb-project" in text and "density_<model>.png" in text
    assert main(["report", "--bogus", "x"]) == 2
    assert "unknown option '--bogus'" in capsys.readouterr().err


def test_report_names_the_commands_that_made_its_runs(tmp_path):
    for seed, acc in enumerate([0.8, 0.82]):
        run_dir = write_run(tmp_path / "sweep", f"s{seed}", config(seed), acc_metrics(acc))
        data = json.loads((run_dir / "results.json").read_text())
        data["command"] = "sparse-lab train -m seed=0,1"
        (run_dir / "results.json").write_text(json.dumps(data))
    build_report([tmp_path / "sweep"], out=tmp_path / "out", plots=False)
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("sparse-lab train -m seed=0,1") == 1 and "Made by:" in md
