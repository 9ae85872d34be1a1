"""``sparse-lab train resume=<run dir>``: continue an interrupted run exactly where its files say it was.

What a run directory holds for this (written by ``experiment.run``):

- ``results.json``: the resolved config (the resume reuses it, so no other override is accepted), the
  completed rounds' metrics and the W&B run id;
- ``checkpoints/round_<r>.pt``: the state at the end of each completed round (model, method, RNG);
- ``checkpoints/last.ckpt``: Lightning's checkpoint of the last completed epoch, with the method's
  state and the run's (round, config digest, RNG) -- see ``sparse_lab.checkpoints``.

A resume rebuilds the run from its config and seed, replays the completed rounds (the method's
``begin_round`` then the round's saved end state: no training), then fits the interrupted round from
``last.ckpt`` when it belongs to that round, or from the round's start when the round had not
finished an epoch. The result is the uninterrupted run's, bit for bit on the CPU.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from sparse_lab.errors import UserError

KEY = "resume"


def _value(override: str) -> str | None:
    key, sep, value = override.partition("=")
    return value if sep and key.lstrip("+~") == KEY else None


def cli_overrides(overrides: list[str]) -> list[str]:
    """The Hydra overrides of ``sparse-lab train``: unchanged without ``resume=``; with it, the run
    directory becomes Hydra's run directory (its ``.hydra/`` is left as the original run wrote it)."""
    values = [v for v in (_value(o) for o in overrides) if v is not None]
    if not values or values[-1] in ("", "null", "None"):
        return overrides
    others = [o for o in overrides if _value(o) is None]
    if others:
        raise UserError(
            f"resume= continues a run with the config in its results.json and takes no other override or "
            f"option, got {others[0]!r}"
        )
    run_dir = Path(values[-1].strip("'\"")).expanduser().resolve()
    previous = read_results(run_dir)
    from sparse_lab.results import process_alive

    if previous.get("status") == "running" and process_alive(previous):
        raise UserError(f"resume: the run in {run_dir} is still running (pid {previous['pid']})")
    quoted = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
    return [f"{KEY}='{quoted}'", f"hydra.run.dir='{quoted}'", "hydra.output_subdir=null"]


def read_results(run_dir: Path) -> dict:
    """A run directory's results.json, checked to be one sparse-lab wrote and one that can be resumed."""
    if not run_dir.is_dir():
        raise UserError(f"resume: {run_dir} is not a directory")
    path = run_dir / "results.json"
    if not path.is_file():
        raise UserError(f"resume: {run_dir} is not a sparse-lab run directory (no results.json)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"resume: {path} is not valid JSON ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict) or "status" not in results:
        raise UserError(f"resume: {path} is not a sparse-lab results file (no config or status)")
    if results["status"] == "completed":
        raise UserError(f"resume: the run in {run_dir} already completed; nothing to resume")
    return results


@dataclass
class ResumePoint:
    run_dir: Path
    results: dict  # the results.json being resumed
    digest: str  # of its config: every checkpoint of the run carries it
    rounds: dict[int, dict] = field(default_factory=dict)  # completed rounds' end states, 0..k-1
    last_ckpt: Path | None = None  # checkpoints/last.ckpt, when it belongs to the first unfinished round
    last_round: int | None = None

    @property
    def config(self) -> dict:
        return self.results["config"]

    @property
    def wandb_id(self) -> str | None:
        wandb = self.results.get("wandb")
        return wandb.get("id") if isinstance(wandb, dict) else None

    def round_state(self, round_index: int) -> dict | None:
        """The end state of ``round_index`` when it completed before the interruption, else None."""
        return self.rounds.get(round_index)

    def checkpoint_for(self, round_index: int) -> Path | None:
        """``last.ckpt`` when training of ``round_index`` continues from it, else None (from the start)."""
        return self.last_ckpt if self.last_round == round_index else None

    def describe(self) -> str:
        if self.last_ckpt is not None:
            return f"round {self.last_round} from {self.last_ckpt.name}"
        return f"the start of round {len(self.rounds)}"


def prepare(run_dir: Path) -> ResumePoint:
    """Everything a resume reads, checked before anything is written (a bad folder changes nothing)."""
    from sparse_lab import checkpoints

    run_dir = Path(run_dir).expanduser().resolve()
    results = read_results(run_dir)
    point = ResumePoint(run_dir, results, checkpoints.config_digest(results["config"]))
    index = 0
    while (path := checkpoints.round_path(run_dir, index)).is_file():
        point.rounds[index] = checkpoints.load_round(path, point.digest)
        index += 1
    last = run_dir / "checkpoints" / checkpoints.LAST
    if last.is_file():
        state = checkpoints.checkpoint_state(checkpoints.load(last))
        if state is None:
            raise UserError(f"resume: {last} was not written by a sparse-lab run (no run state in it)")
        if state.get("config_digest") != point.digest:
            raise UserError(f"resume: {last} belongs to another run (its config differs from results.json's)")
        if state["round"] > index:
            raise UserError(
                f"resume: {last} is from round {state['round']}, but round {index}'s checkpoint "
                f"{checkpoints.round_path(run_dir, index).name} is missing"
            )
        if state["round"] == index:  # an older round's last.ckpt is superseded by its round file
            point.last_ckpt, point.last_round = last, index
    return point


def keep_csv_rows(loggers: list) -> None:
    """Let the CSV logger of a resumed run append to its metrics.csv: Lightning's CSV writer deletes the
    file when it starts, and could only append rows with the columns it has seen itself."""
    from pytorch_lightning.loggers import CSVLogger

    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        text = path.read_text()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
            writer = logger.experiment  # made now: it removes the file, which is put back below
        path.write_text(text)
        writer.metrics_keys = next(csv.reader(io.StringIO(text)), [])
