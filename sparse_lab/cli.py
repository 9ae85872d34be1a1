"""`sparse-lab <command>`. Imports stay light here (no torch) so --help and `list` answer at once."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# The user's own HYDRA_FULL_ERROR=1 shows tracebacks; `train` sets it too (for unwrapped errors), hence read now.
USER_FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"

HELP = """\
usage: sparse-lab <command> [options]

Train and evaluate sparse networks: dataset x model x sparsity method x hardware target.

commands:
  train [overrides]   run one experiment; Hydra overrides such as model=mobilenet_v2
                      sparsity=random sparsity.sparsity=0.9 trainer.max_epochs=10
                      -m/--multirun  sweep: sparse-lab train -m model=vit,mobilenet_v2 seed=0,1
                      --cfg job      print the composed config and exit
                      resume=<run dir>  continue an interrupted or killed run exactly (its config)
                      skip_completed=true  skip jobs whose config already completed
                      --help         Hydra's help for the train command
                      --debug        an error with its traceback (train and profile)
  profile [overrides] [--json]
                      per-layer MACs (dense, effective, on the target), energy and parameters of
                      a model without training: sparse-lab profile model=vit model.preset=vit_b16
                      data.image_size=224 data.num_classes=1000 hardware=ampere_2to4
  profile run=<run dir> [hardware=<target>] [--json]
                      the same for a trained run's deployed model, on any target
  report DIR... [--out DIR] [--wandb [--wandb-project NAME]]
                      collect the results.json files below the folders (a sweep, several, single
                      runs): seed groups with mean ± std and 95% CI, failed runs, paired comparisons
                      of methods; writes report.csv, report.md, Pareto / sparsity plots and a
                      per-layer density heatmap per model (PNG); --wandb also logs it as one W&B
                      run (job type report) in the sweep's group; --help for details
  repro [CLAIM ...] [--quick]
                      test the papers' claims beyond seed noise: each claim's seeded sweep, paired
                      differences with 95% CIs and a verdict; regenerates docs/results.md
                      (make repro [CLAIM=<name>] [QUICK=1]); --help for details
  list [hydra.searchpath=[file://DIR]]
                      every config group with its options and what each one is
                      (with your own config folder's options too)
  --version           print the version

Runs go to outputs/runs/<date>/<time>_<data>_<model>_<sparsity>/ (sweeps to outputs/multirun/),
each with results.json, final_model.pt, deployed.pt2, csv/metrics.csv and the resolved config in .hydra/.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("train", "profile") and "--debug" in rest:  # errors with their traceback (see `fail`)
        os.environ["SPARSE_LAB_DEBUG"], rest = "1", [a for a in rest if a != "--debug"]
    if command == "--version":
        from sparse_lab import __version__

        print(f"sparse-lab {__version__}")
        return 0
    if command == "list":
        from sparse_lab.catalog import format_catalog, search_path_dirs

        print(format_catalog(CONFIG_DIR, search_path_dirs(rest)), end="")
        return 0
    if command == "train":
        return train(rest)
    if command == "profile":
        return profile(rest)
    if command == "report":
        return report(rest)
    if command == "repro":
        from sparse_lab.repro import main as repro_main

        return repro_main(rest)
    print(
        f"error: unknown command {command!r}; choose one of: train, profile, report, repro, list "
        "(see sparse-lab --help)",
        file=sys.stderr,
    )
    return 2


def train(overrides: list[str]) -> int:
    from sparse_lab.catalog import check_group_choices
    from sparse_lab.errors import RunInterrupted, UserError
    from sparse_lab.results import COMMAND_ENV
    from sparse_lab.resume import cli_overrides

    os.environ[COMMAND_ENV] = shlex.join(["sparse-lab", "train", *overrides])  # results.json's "command"
    try:
        check_group_choices(CONFIG_DIR, overrides)
        overrides = cli_overrides(overrides)  # resume=<run dir>: that run's directory and config
    except UserError as exc:
        return fail(exc)
    # Errors reach us unwrapped, so they can be reported in one line (see `fail`).
    os.environ["HYDRA_FULL_ERROR"] = "1"
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    failed_jobs: list[str] = []

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def train_job(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from sparse_lab.launch import objective_values, set_job_threads
        from sparse_lab.logs import quiet_third_party_logs
        from sparse_lab.schema import check_config

        quiet_third_party_logs()  # before the heavy imports: some log on import
        hydra_cfg = HydraConfig.get()
        try:
            check_config(cfg, Path(hydra_cfg.runtime.output_dir))  # every key, before torch (sparse_lab/schema)
            set_job_threads(cfg, hydra_cfg.launcher)  # parallel jobs share the cores (sparse_lab/launch.py)
            from sparse_lab.experiment import run

            results = run(cfg, Path(hydra_cfg.runtime.output_dir))
            return objective_values(cfg.get("objectives"), results)  # what a searching sweeper optimises
        except UserError as exc:
            if hydra_cfg.mode != RunMode.MULTIRUN:
                raise SystemExit(fail(exc)) from None
            # A sweep goes on with its other jobs; this one's results.json says why it failed.
            failed_jobs.append(hydra_cfg.job.num)
            fail(exc, prefix=f"job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)}): ")

    sys.argv = ["sparse-lab train", *overrides]
    started = time.time()
    try:
        train_job()
    except (HydraException, OmegaConfBaseException) as exc:
        return fail(exc)
    except OSError as exc:  # an unwritable or full output folder (Hydra creates it before the job starts)
        if exc.filename is None:
            raise
        return fail(
            UserError(f"cannot write {exc.filename}: {exc.strerror} (choose another hydra.run.dir / paths.output_dir)")
        )
    except RunInterrupted as exc:  # SIGINT / SIGTERM: the run stopped cleanly and can be resumed
        print(interrupted_message(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; results.json in the run directory says how far the run got", file=sys.stderr)
        return 130
    if not failed_jobs:  # jobs run in other processes (joblib, submitit) say it in their results.json
        from sparse_lab.launch import failed_sweep_jobs

        failed_jobs = failed_sweep_jobs(since=started)
    if failed_jobs:
        print(f"error: {len(failed_jobs)} sweep job(s) failed: {failed_jobs}", file=sys.stderr)
        return 2
    return 0


def profile(args: list[str]) -> int:
    from sparse_lab.catalog import check_group_choices
    from sparse_lab.errors import UserError

    as_json = "--json" in args
    overrides = [a for a in args if a != "--json"]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        check_group_choices(CONFIG_DIR, overrides)
        from sparse_lab.logs import quiet_third_party_logs
        from sparse_lab.profile import format_profile, profile, to_json

        quiet_third_party_logs()
        result = profile(CONFIG_DIR, overrides)
    except (UserError, HydraException, OmegaConfBaseException) as exc:
        return fail(exc)
    print(to_json(result) if as_json else format_profile(result).rstrip("\n"))
    return 0


def report(args: list[str]) -> int:
    from sparse_lab.report import main as report_main

    return report_main(args)


def interrupted_message(exc) -> str:
    """What an interrupted run prints: the signal, where its status is, and the command that resumes it."""
    if exc.run_dir is None:
        return f"{exc}; results.json in the run directory says how far the run got"
    from sparse_lab.lifecycle import resume_hint, shown

    return f"{exc}: results.json in {shown(exc.run_dir)} says 'interrupted'; {resume_hint(exc.run_dir)}"


def fail(exc: BaseException, prefix: str = "") -> int:
    """One line on stderr, no traceback: the message's first line is the informative one."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    message = lines[0] if lines else type(exc).__name__
    if len(lines) > 1 and lines[1].startswith("To append"):  # Hydra: unknown key, with its hint
        from sparse_lab.schema import unknown_override

        message = unknown_override(message, lines[1])
    if isinstance(getattr(exc, "override", None), str):  # Hydra's grammar rejected an override: name it
        message = f"cannot parse the override {exc.override!r}: {message} (quote a value with brackets or parentheses)"
    if os.environ.get("SPARSE_LAB_DEBUG") == "1" or USER_FULL_ERROR:  # --debug / HYDRA_FULL_ERROR=1
        import traceback

        traceback.print_exception(exc)
    print(f"error: {prefix}{message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
