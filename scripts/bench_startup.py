"""Start-up time of the command line: `sparse-lab --help`, `sparse-lab list`, `sparse-lab train --help`,
with `python -c "import torch"` for reference.

Each command runs as a fresh subprocess (the same Python as this script, so the same environment); the
commands are interleaved round by round and each reports the median wall time over rounds and its spread
(min-max). ``--markdown PATH`` writes the section to PATH.

    .venv/bin/python scripts/bench_startup.py [--runs 7] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The console script beside this Python (the venv's), else the same entry point through -m.
_SCRIPT = Path(sys.executable).with_name("sparse-lab")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "sparse_lab.cli"]
COMMANDS = {
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "sparse-lab --help": [*CLI, "--help"],
    "sparse-lab list": [*CLI, "list"],
    "sparse-lab train --help": [*CLI, "train", "--help"],
}
FLOOR = 'python -c "import torch"'


def time_command(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"bench_startup: {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed


def measure(runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    names = list(COMMANDS)
    for name in names:  # warm the page cache (first imports read every .pyc from disk)
        time_command(COMMANDS[name])
    for r in range(runs):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_command(COMMANDS[name]))
    return times


def report(args, times: dict[str, list[float]]) -> str:
    floor = statistics.median(times[FLOOR])
    rows = [
        f"| `{name}` | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} "
        f"| {statistics.median(values) / floor:.2f}x |"
        for name, values in times.items()
    ]
    command = ".venv/bin/python scripts/bench_startup.py " + ("--quick" if args.quick else f"--runs {args.runs}")
    return (
        "\n".join(
            [
                "## Command-line start-up (`scripts/bench_startup.py`)",
                "",
                "```",
                command + " --markdown PATH",
                "```",
                "",
                f"Wall time of each command as a fresh process (`{' '.join(Path(a).name for a in CLI)}`), after one "
                f"warm-up run each; {args.runs} interleaved round(s), median and min-max over rounds. "
                '`python -c "import torch"` is the reference: what any command that needs torch pays at least. '
                "No goal is set for start-up; the table is for spotting regressions (an import moved to module level).",
                "",
                "| command | median s | min-max s | / import torch |",
                "|---|---:|---:|---:|",
                *rows,
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="interleaved rounds (at least 5 for a median)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round")
    parser.add_argument("--markdown", type=Path, help="write the section (heading, command, table, goal) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    text = report(args, measure(args.runs))
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
