"""Checkpoint files: written atomically, read with ``weights_only=True``, holding what an exact resume needs.

- :class:`AtomicCheckpointIO` is the Trainer's checkpoint plugin writing every Lightning checkpoint
  (``checkpoints/last.ckpt``) with ``safe_io.atomic_save`` (a kill mid-write leaves the previous file
  whole) and reading it with ``weights_only=True``. Lightning's own "atomic" save stages the file in
  the system's temporary folder and moves it, which is a copy -- not atomic -- when that folder is on
  another disk.
- :class:`RunState` is a callback whose state travels in every Lightning checkpoint: the round it
  belongs to, the run's config digest (a checkpoint from another run is refused) and the global RNG
  states, restored when ``Trainer.fit(ckpt_path=...)`` loads the checkpoint.
- Round checkpoints (``checkpoints/round_<r>.pt``): the model, the sparsity method's state and the RNG
  states at the end of round ``r`` (after its test), from which a resume rebuilds the completed
  rounds without training them again.

Everything saved is plain data (tensors, numbers, strings, lists, dicts), so every file loads with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO

from sparse_lab import rng
from sparse_lab.errors import UserError
from sparse_lab.safe_io import atomic_save, load

__all__ = ["AtomicCheckpointIO", "RunState", "atomic_save", "load"]

FORMAT = 1  # of what sparse-lab adds to a checkpoint
STATE_KEY = "sparse_lab"  # RunState's key in a Lightning checkpoint's "callbacks"
LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written with :func:`atomic_save` and read with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        return load(path)


def config_digest(config: dict) -> str:
    """A short hash of a resolved config: a checkpoint names the run it belongs to by it."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunState(pl.Callback):
    """The run's own state in every Lightning checkpoint: round, config digest and RNG states.

    The RNG states are captured when the checkpoint is written and put back when ``Trainer.fit``
    restores it (after the ``setup`` hooks, before the training dataloader's iterator is made, as at
    the start of the next epoch of the run that wrote it): the shuffle order and dropout continue
    exactly."""

    def __init__(self, round_index: int, digest: str):
        self.round_index = round_index
        self.digest = digest

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def state_dict(self) -> dict:
        return {"format": FORMAT, "round": self.round_index, "config_digest": self.digest, "rng": rng.capture()}

    def load_state_dict(self, state_dict: dict) -> None:
        rng.restore(state_dict["rng"])


def checkpoint_state(checkpoint: dict) -> dict | None:
    """What :class:`RunState` put in a Lightning checkpoint (None for a checkpoint sparse-lab did not write)."""
    state = (checkpoint.get("callbacks") or {}).get(STATE_KEY)
    return state if isinstance(state, dict) and "round" in state else None


# -- end-of-round checkpoints ------------------------------------------------------------------------
def round_path(run_dir: Path, round_index: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"round_{round_index}.pt"


def save_round(
    run_dir: Path,
    round_index: int,
    model: torch.nn.Module,
    method: pl.Callback,
    digest: str,
    test: dict,
    global_step: int,
) -> None:
    """The state at the end of round ``round_index`` (after its test), RNG included."""
    state = {
        "format": FORMAT,
        "round": round_index,
        "config_digest": digest,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "method": method.state_dict(),
        "rng": rng.capture(),
        "test": {k: float(v) for k, v in test.items()},
        "global_step": int(global_step),
    }
    atomic_save(state, round_path(run_dir, round_index))


def load_round(path: Path, digest: str) -> dict:
    state = load(path, "round checkpoint")
    if state.get("format") != FORMAT or "model" not in state or "method" not in state:
        raise UserError(f"round checkpoint {path} was not written by this version of sparse-lab")
    if state.get("config_digest") != digest:
        raise UserError(f"round checkpoint {path} belongs to another run (its config differs from results.json's)")
    return state


def restore_round(state: dict, model: torch.nn.Module, method: pl.Callback) -> None:
    """Put the end-of-round state back: weights, the method's state and the RNG states."""
    model.load_state_dict(state["model"])
    method.load_state_dict(state["method"])
    rng.restore(state["rng"])
