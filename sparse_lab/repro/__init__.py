"""`sparse-lab repro`: run the papers' claims as seeded sweeps, judge them, regenerate docs/results.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sparse_lab.repro.claims import CLAIMS, claim_names, get_claim

ROOT = Path(__file__).resolve().parents[2]

HELP = f"""\
usage: sparse-lab repro [CLAIM ...] [--quick] [--judge-only | --render-only] [--out DIR] [--records DIR] [--doc FILE]

Test each paper's claim beyond seed noise: run the claim's sweep (configs/experiment/repro_<claim>.yaml,
three seeds), judge it by paired differences with 95% confidence intervals, store the numbers in
<records>/<claim>.json and a plot <records>/<claim>.png, and regenerate <doc> from every stored record.

claims: {", ".join(claim_names())} (default: all, in that order)

options:
  --quick         one seed and a few steps per run: a smoke test of every sweep, never evidence
                  (writes below --out only: records in <out>/records, the page in <out>/results.md)
  --judge-only    judge sweeps already in --out again (no training), then regenerate the page
  --render-only   regenerate the page from the stored records only (also embeds every sweep report
                  stored as <records>/sweeps/<name>/report.md by `sparse-lab report ... --out`)
  --out DIR       where the sweeps run (default: outputs/repro)
  --records DIR   the claims' JSON records and plots (default: docs/repro)
  --doc FILE      the generated page (default: docs/results.md)
  --list          the claims with their commands
  -h, --help      this help

make repro [CLAIM=<name>] [QUICK=1] runs this. Wall time of each claim: docs/results.md.
"""


def main(args: list[str]) -> int:
    names: list[str] = []
    quick = judge_only = render_only = False
    out, records, doc = ROOT / "outputs" / "repro", None, None
    it = iter(args)
    for a in it:
        if a in ("-h", "--help"):
            print(HELP, end="")
            return 0
        if a == "--list":
            for claim in CLAIMS:
                print(f"{claim.name:20} {claim.title}\n{'':20} " + f"\n{'':20} ".join(claim.commands()))
            return 0
        if a in ("--out", "--records", "--doc"):
            value = next(it, None)
            if not value:
                print(f"error: {a} needs a path", file=sys.stderr)
                return 2
            if a == "--out":
                out = Path(value)
            elif a == "--records":
                records = Path(value)
            else:
                doc = Path(value)
        elif a == "--quick":
            quick = True
        elif a == "--judge-only":
            judge_only = True
        elif a == "--render-only":
            render_only = True
        elif a.startswith("-"):
            print(f"error: unknown option {a!r} (see sparse-lab repro --help)", file=sys.stderr)
            return 2
        else:
            names += [n for n in a.replace(",", " ").split() if n]
    unknown = [n for n in names if n not in claim_names()]
    if unknown:
        print(f"error: unknown claim {unknown[0]!r}; choose from: {', '.join(claim_names())}", file=sys.stderr)
        return 2
    out = out.resolve()
    records = (records or (out / "records" if quick else ROOT / "docs" / "repro")).resolve()
    doc = (doc or (out / "results.md" if quick else ROOT / "docs" / "results.md")).resolve()
    if render_only:
        from sparse_lab.repro.render import write_results

        write_results(doc, records)
        print(f"wrote {doc}")
        return 0
    return repro([get_claim(n) for n in names] or list(CLAIMS), out, records, doc, quick, judge_only)


def repro(claims, out: Path, records: Path, doc: Path, quick: bool, judge_only: bool) -> int:
    from sparse_lab.repro.render import plot_claim, write_results
    from sparse_lab.repro.runner import judge, record, run_sweeps

    records.mkdir(parents=True, exist_ok=True)
    worst = 0
    for claim in claims:
        commands, wall = [], 0.0
        if judge_only:
            previous = records / f"{claim.name}.json"
            if previous.exists():  # keep the commands and wall time of the run that made the sweeps
                old = json.loads(previous.read_text())
                commands, wall = old["commands"], old["wall_s"]
        else:
            commands, wall = run_sweeps(claim, out, quick, log=lambda m: print(m, flush=True))
        try:
            result, failed = judge(claim, out)
        except ValueError as exc:  # a claim whose variants match several groups: its definition is wrong
            print(f"error: {claim.name}: {exc}", file=sys.stderr)
            return 2
        rec = record(claim, result, failed, commands, wall, quick)
        (records / f"{claim.name}.json").write_text(json.dumps(rec, indent=1) + "\n")
        plot_claim(claim, rec, records / f"{claim.name}.png")
        print(f"[{claim.name}] {rec['verdict']} ({wall / 60:.1f} min; {len(failed)} failed run(s))", flush=True)
        if failed or result.missing:
            worst = 1
        write_results(doc, records)  # after every claim, so a long `make repro` leaves a page at any point
    print(f"wrote {doc}")
    return worst
