"""`sparse-lab repro`: claims judged by paired CIs on hand-made runs, the generated page, and a quick real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sparse_lab import test_items
from sparse_lab.report.runs import Run, group_runs
from sparse_lab.repro import main as repro_main
from sparse_lab.repro.checks import (
    ACCURACY,
    CONFOUNDED,
    EPE3D,
    HELD,
    NOT_HELD,
    UNCLEAR,
    Check,
    Gap,
    Metric,
    Variant,
    judge_claim,
)
from sparse_lab.repro.claims import CLAIMS, get_claim
from sparse_lab.repro.render import claim_section, write_results
from sparse_lab.results import flatten_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def runs(arm: dict, values: list[float], metric: str = "test/acc", **extra) -> list[Run]:
    config = {"model": {"name": "vit"}, "sparsity": {"name": "random", **arm}}
    return [
        Run(Path(f"/r/{arm}/{seed}"), "completed", None, {**config, "seed": seed}, {metric: v, **extra})
        for seed, v in enumerate(values)
    ]


def judged(a_values, b_values, check: Check, metric: str = "test/acc"):
    groups = group_runs(runs({"arm": "a"}, a_values, metric) + runs({"arm": "b"}, b_values, metric))
    variants = [Variant("a", {"sparsity.arm": "a"}), Variant("b", {"sparsity.arm": "b"})]
    return judge_claim(groups, variants, [check])


# -- verdicts ----------------------------------------------------------------------------------------
def test_better_is_held_only_when_the_ci_of_the_paired_difference_excludes_zero():
    check = Check("better", "a", "b")
    held = judged([0.80, 0.82, 0.84], [0.78, 0.805, 0.83], check)  # +0.02, +0.015, +0.01 every seed
    assert held.verdict == HELD and held.outcomes[0].values == pytest.approx([0.02, 0.015, 0.01])
    noisy = judged([0.80, 0.82, 0.84], [0.78, 0.83, 0.83], check)  # +0.02, -0.01, +0.01
    assert noisy.verdict == UNCLEAR
    reversed_ = judged([0.78, 0.805, 0.83], [0.80, 0.82, 0.84], check)
    assert reversed_.verdict == NOT_HELD


def test_pairing_by_seed_sees_a_difference_that_the_seed_spread_would_hide():
    # a is 0.5 points above b at every seed, while seeds move both by 4 points: held only because paired
    result = judged([0.800, 0.840, 0.880], [0.795, 0.835, 0.875], Check("better", "a", "b"))
    assert result.verdict == HELD


def test_lower_is_better_metrics_flip_the_direction():
    check = Check("better", "a", "b", metric=EPE3D)
    assert judged([0.10, 0.11, 0.12], [0.12, 0.13, 0.14], check, "test/epe3d").verdict == HELD
    assert judged([0.12, 0.13, 0.14], [0.10, 0.11, 0.12], check, "test/epe3d").verdict == NOT_HELD


def test_noninferiority_against_a_margin():
    check = Check("noninferior", "a", "b", margin=0.03)
    assert judged([0.80, 0.81, 0.82], [0.81, 0.82, 0.83], check).verdict == HELD  # 1 point below, tight
    assert judged([0.70, 0.71, 0.72], [0.80, 0.81, 0.82], check).verdict == NOT_HELD  # 10 points below
    assert judged([0.76, 0.82, 0.79], [0.80, 0.81, 0.82], check).verdict == UNCLEAR  # -4, +1, -3


def test_ratio_checks_b_over_a_against_the_factor():
    nonzero = Metric("zeros", "nonzero", higher_is_better=False, complement=True)
    check = Check("ratio", "a", "b", metric=nonzero, factor=2.0)
    # a: 10% nonzero, b: 30% nonzero -> 3x fewer
    assert judged([0.90, 0.905, 0.895], [0.70, 0.70, 0.71], check, "zeros").verdict == HELD
    assert judged([0.80, 0.805, 0.795], [0.70, 0.70, 0.71], check, "zeros").verdict == NOT_HELD  # 1.5x


def test_a_gap_between_gaps():
    arms = {"dense64": [0.80, 0.82, 0.81], "sparse64": [0.74, 0.77, 0.75], "dense256": [0.85, 0.86, 0.85]}
    arms["sparse256"] = [0.84, 0.85, 0.845]
    all_runs = [r for name, values in arms.items() for r in runs({"arm": name}, values)]
    variants = [Variant(name, {"sparsity.arm": name}) for name in arms]
    check = Check("better", Gap("dense64", "sparse64"), Gap("dense256", "sparse256"), says="gap shrinks")
    result = judge_claim(group_runs(all_runs), variants, [check])
    assert result.verdict == HELD  # gaps 6 / 5 / 6 points at width 64 against 1 / 1 / 0.5 at 256
    assert result.outcomes[0].values == pytest.approx([0.05, 0.04, 0.055])


def test_a_missing_variant_or_a_single_seed_is_never_held():
    check = Check("better", "a", "b")
    groups = group_runs(runs({"arm": "a"}, [0.9, 0.91, 0.92]))
    result = judge_claim(groups, [Variant("a", {"sparsity.arm": "a"}), Variant("b", {"sparsity.arm": "b"})], [check])
    assert result.missing == ["b"] and result.verdict == UNCLEAR
    assert judged([0.9], [0.5], check).verdict == UNCLEAR  # one seed: no interval


def test_a_variant_matching_two_groups_is_an_error_in_the_claim():
    groups = group_runs(runs({"arm": "a", "x": 1}, [0.9, 0.9]) + runs({"arm": "a", "x": 2}, [0.8, 0.8]))
    with pytest.raises(ValueError, match="matches 2 groups"):
        judge_claim(groups, [Variant("a", {"sparsity.arm": "a"})], [])


# -- the claims' definitions --------------------------------------------------------------------------
@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.name)
def test_every_claim_sweeps_three_seeds_and_each_variant_is_in_one_of_its_sweeps(claim, make_cfg):
    sweeps = []
    for experiment in claim.experiments:
        params = OmegaConf.load(CONFIGS / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
        assert str(params.seed).split(",") == ["0", "1", "2"]
        swept = {key: str(values).split(",") for key, values in params.items()}
        composed = flatten_config(OmegaConf.to_container(make_cfg(f"experiment={experiment}"), resolve=True))
        sweeps.append((swept, composed))

    def selects(variant, swept, composed) -> bool:  # a run of this sweep has every value the variant asks for
        def among(key, value) -> bool:
            if key.endswith(".name") and key.removesuffix(".name") in swept:  # a swept config group's option
                key = key.removesuffix(".name")
            return any(_same(value, v) for v in swept[key]) if key in swept else _same(value, str(composed.get(key)))

        return all(among(key, value) for key, value in variant.where.items())

    for variant in claim.variants:
        assert any(selects(variant, *sweep) for sweep in sweeps), variant.label
    labels = [v.label for v in claim.variants]
    for check in claim.checks:
        for term in (check.a, check.b):
            for label in (term.a, term.b) if isinstance(term, Gap) else (term,):
                assert label in labels


def _same(value, text: str) -> bool:
    if isinstance(value, bool):
        return text.strip().lower() == str(value).lower()
    if isinstance(value, (int, float)):
        return float(text) == float(value)
    return text.strip() == value


# -- the page -----------------------------------------------------------------------------------------
def test_results_page_shows_every_claim_and_the_numbers_of_a_record(tmp_path):
    records = tmp_path / "repro"
    records.mkdir()
    summary = {"n": 3, "mean": 0.81, "std": 0.01, "ci": [0.785, 0.835]}
    record = {
        "claim": "nm",
        "verdict": NOT_HELD,
        "variants": [{"label": "2:4 SR-STE", "values": {"0": 0.8, "1": 0.81, "2": 0.82}, "summary": summary}],
        "checks": [
            {
                "label": "acc: 2:4 SR-STE > 2:4 STE",
                "says": "SR-STE beats STE at 2:4",
                "kind": "better",
                "scale": 100.0,
                "seeds": ["0", "1", "2"],
                "values": [-0.01, -0.012, -0.011],
                "summary": {"n": 3, "mean": -0.011, "std": 0.001, "ci": [-0.0135, -0.0085]},
                "verdict": NOT_HELD,
            }
        ],
        "missing": ["2:4 STE"],
        "failed": [{"run": "/x/3", "status": "failed", "error": "boom"}],
        "commands": ["sparse-lab train -m experiment=repro_nm hydra/launcher=joblib"],
        "wall_s": 420.0,
        "date": "2026-12-02",
        "machine": "x86_64, 2 CPU cores",
        "torch": "2.x",
        "quick": False,
    }
    for v in record["variants"]:
        v["columns"] = {"sparsity/global": 0.5}
    (records / "nm.json").write_text(json.dumps(record))
    doc = tmp_path / "results.md"
    write_results(doc, records)
    text = doc.read_text()
    for claim in CLAIMS:
        assert f"## {claim.title}" in text
    assert text.count("Not run yet") == len(CLAIMS) - 1
    assert "**Verdict: not held**" in text and "experiment=repro_nm hydra/launcher=joblib" in text
    assert "| 2:4 SR-STE | 3 | 81.00 ± 1.00 | 80.00 / 81.00 / 82.00 | 0.5 |" in text
    assert "| -1.00 / -1.20 / -1.10 | -1.10 ± 0.10 | [-1.35, -0.85] | 3 seeds | not held |" in text
    assert "Variants without a completed run: 2:4 STE" in text and "boom" in text
    assert "7.0 min" in text


def test_a_claim_not_run_says_how_to_run_it(tmp_path):
    text = claim_section(get_claim("sctn"), None, tmp_path)
    assert "Not run yet: `make repro CLAIM=sctn`" in text


# -- command line -------------------------------------------------------------------------------------
def test_unknown_claim_and_option_are_one_line(capsys):
    assert repro_main(["lotery"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown claim 'lotery'" in err and "lottery" in err
    assert repro_main(["--fast"]) == 2
    assert "unknown option '--fast'" in capsys.readouterr().err


def test_list_names_each_claim_with_its_command(capsys):
    assert repro_main(["--list"]) == 0
    out = capsys.readouterr().out
    for claim in CLAIMS:
        assert claim.name in out and f"experiment={claim.experiments[0]}" in out


@pytest.mark.e2e
@pytest.mark.slow
def test_quick_repro_runs_every_claims_sweep_and_judges_it(tmp_path):
    """`make repro QUICK=1`: every claim's real Hydra multirun, one seed, a few steps; judged and rendered."""
    out = tmp_path / "repro"
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_lab", "repro", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for claim in CLAIMS:
        record = json.loads((out / "records" / f"{claim.name}.json").read_text())
        assert record["quick"] and not record["failed"] and not record["missing"], claim.name
        assert [v["label"] for v in record["variants"]] == [v.label for v in claim.variants]
        assert all(v["summary"]["n"] == 1 for v in record["variants"])
        assert record["verdict"] == UNCLEAR  # one seed never decides a claim
        assert (out / "records" / f"{claim.name}.png").stat().st_size > 0
    page = (out / "results.md").read_text()
    assert page.count("quick smoke run") == len(CLAIMS) and "Not run yet" not in page
    assert ACCURACY.label in page


def test_a_stored_sweep_report_is_embedded_with_its_plots(tmp_path):
    report = tmp_path / "repro" / "sweeps" / "methods"
    report.mkdir(parents=True)
    (report / "report.md").write_text("# sparse-lab report\n\n## Groups\n\n| a |\n\n![pareto_acc](pareto_acc.png)\n")
    write_results(tmp_path / "results.md", tmp_path / "repro")
    text = (tmp_path / "results.md").read_text()
    assert "## Sweep `methods`: its `sparse-lab report`" in text and "### Groups" in text
    assert "![pareto_acc](repro/sweeps/methods/pareto_acc.png)" in text and "# sparse-lab report" not in text


def test_render_only_regenerates_the_page_from_stored_records(tmp_path, capsys):
    (tmp_path / "records" / "sweeps" / "s").mkdir(parents=True)
    (tmp_path / "records" / "sweeps" / "s" / "report.md").write_text("# sparse-lab report\n\nbody\n")
    doc = tmp_path / "page.md"
    assert repro_main(["--render-only", "--records", str(tmp_path / "records"), "--doc", str(doc)]) == 0
    assert "## Sweep `s`" in doc.read_text() and doc.read_text().count("Not run yet") == len(CLAIMS)


def test_a_failed_premise_makes_the_claim_confounded_whatever_its_checks_say():
    claim_check = Check("better", "a", "b")
    premise = Check("noninferior", "b", "a", margin=0.01, premise=True)
    groups = group_runs(runs({"arm": "a"}, [0.85, 0.86, 0.87]) + runs({"arm": "b"}, [0.60, 0.65, 0.62]))
    variants = [Variant("a", {"sparsity.arm": "a"}), Variant("b", {"sparsity.arm": "b"})]
    assert judge_claim(groups, variants, [claim_check]).verdict == HELD
    assert judge_claim(groups, variants, [claim_check, premise]).verdict == CONFOUNDED
    fine = group_runs(runs({"arm": "a"}, [0.85, 0.86, 0.87]) + runs({"arm": "b"}, [0.845, 0.853, 0.864]))
    assert judge_claim(fine, variants, [claim_check, premise]).verdict == HELD


def test_a_check_on_accuracy_counts_the_test_items_when_the_runs_recorded_them(tmp_path):
    # Every seed: a gets 2 more of 400 test items right than b (0.5 points, std 0 over seeds). Seeds alone
    # call it held; with the items, 2 images in 400 are within the test set's sampling error.
    labels = np.arange(400) % 10
    made = []
    for arm, extra in (("a", 2), ("b", 0)):
        for run in runs({"arm": arm}, [0.0] * 3):
            right = np.zeros(400, dtype=np.uint8)
            right[: 300 + extra] = 1
            run.path = tmp_path / arm / str(run.seed)
            run.path.mkdir(parents=True)
            run.metrics["test/acc"] = right.mean()
            run.test_items = test_items.save(run.path, "test/acc", right, labels)
            made.append(run)
    variants = [Variant("a", {"sparsity.arm": "a"}), Variant("b", {"sparsity.arm": "b"})]
    (outcome,) = judge_claim(group_runs(made), variants, [Check("better", "a", "b")]).outcomes
    assert outcome.summary.items == 400 and outcome.verdict == UNCLEAR
    for run in made:
        run.test_items = None
    (outcome,) = judge_claim(group_runs(made), variants, [Check("better", "a", "b")]).outcomes
    assert outcome.summary.items is None and outcome.verdict == HELD


def test_an_aside_is_judged_and_shown_but_not_counted_in_the_verdict():
    claim_check = Check("better", "a", "b")
    aside = Check("better", "c", "b", aside=True)  # another setting: fails here, yet the claim holds
    groups = group_runs(
        runs({"arm": "a"}, [0.85, 0.86, 0.87]) + runs({"arm": "b"}, [0.80, 0.81, 0.80]) + runs({"arm": "c"}, [0.7] * 3)
    )
    variants = [Variant(arm, {"sparsity.arm": arm}) for arm in "abc"]
    result = judge_claim(groups, variants, [claim_check, aside])
    assert result.verdict == HELD and [o.verdict for o in result.outcomes] == [HELD, NOT_HELD]


def test_a_claims_plot_is_linked_relative_to_the_page(tmp_path):
    records = tmp_path / "docs" / "repro"
    records.mkdir(parents=True)
    (records / "sctn.png").write_bytes(b"png")
    rec = {"verdict": UNCLEAR, "commands": [], "wall_s": 1.0, "machine": "m", "torch": "t", "date": "d"}
    rec |= {"variants": [], "checks": [], "missing": [], "failed": []}
    (records / "sctn.json").write_text(json.dumps(rec))
    write_results(tmp_path / "docs" / "results.md", records)
    assert "![sctn](repro/sctn.png)" in (tmp_path / "docs" / "results.md").read_text()
