"""How a run stops: on a signal (SIGINT, SIGTERM) at a clean point, and at once on a non-finite loss.

- :class:`SignalGuard` replaces the SIGINT and SIGTERM handlers for the duration of a run. During
  ``Trainer.fit`` a signal is *deferred*: :class:`StopOnSignal` raises :class:`~sparse_lab.errors.RunInterrupted`
  at the next batch end (so a checkpoint being written is finished, never torn); elsewhere (testing,
  profiling) and on a second signal it is raised at once. The run then records ``interrupted``; the
  resumable checkpoint is the last one written, ``checkpoints/last.ckpt`` (end of the last completed
  epoch), or the end-of-round checkpoints when the round had not finished an epoch.
- :class:`FiniteLoss` checks the training loss each step, before its backward pass, and stops the
  run with :class:`TrainingDiverged` naming the step. On the CPU the check is free; on an accelerator
  the flags stay on the device and are read every ``log_every_n_steps`` steps (when Lightning syncs to
  log anyway) and always before a checkpoint is written, so a checkpoint never holds a diverged model.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
from pathlib import Path

import pytorch_lightning as pl
import torch

from sparse_lab.errors import RunInterrupted, UserError

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite."""


def interruption(exc: BaseException) -> RunInterrupted | None:
    """``exc`` as a RunInterrupted when a signal caused it (a KeyboardInterrupt where no guard was
    installed, Lightning's own SIGTERMException), else None."""
    if isinstance(exc, RunInterrupted):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return RunInterrupted(signal.SIGINT)
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    if isinstance(exc, SIGTERMException):
        return RunInterrupted(signal.SIGTERM)
    return None


def shown(path: Path) -> str:
    """``path`` as a user would type it: relative to the working directory when below it."""
    path = Path(path).resolve()
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(relative) if str(relative) != "." else os.curdir


def resume_hint(run_dir: Path) -> str:
    """How to continue an interrupted run, as a command to paste."""
    return f"resume with: sparse-lab train resume={shlex.quote(shown(run_dir))}"


class SignalGuard:
    """SIGINT / SIGTERM handlers for one run (main thread only; elsewhere Python allows none)."""

    def __init__(self):
        self.pending: int | None = None  # the first signal received
        self.deferring = False  # True while training: the signal is acted on at the next batch end
        self._previous: dict[int, object] = {}

    def install(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.pending is None and self.deferring:
            self.pending = signum
            log.warning("%s received: stopping after the current batch", signal.Signals(signum).name)
            return
        raise RunInterrupted(self.pending or signum)

    def check(self) -> None:
        if self.pending is not None:
            raise RunInterrupted(self.pending)


class StopOnSignal(pl.Callback):
    """Acts on a deferred signal at the next batch end of ``Trainer.fit`` (training or validation).

    In a multi-process run the ranks agree first (one all-reduce of the signal number per batch), so
    they stop at the same step even when only some of them received the signal; a rank that stopped
    alone would leave the others waiting in their next collective for ever."""

    def __init__(self, guard: SignalGuard):
        self.guard = guard

    def check(self, trainer: pl.Trainer) -> None:
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            signum = torch.tensor([self.guard.pending or 0], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(signum, op=torch.distributed.ReduceOp.MAX)
            if int(signum.item()):
                self.guard.pending = self.guard.pending or int(signum.item())
                raise RunInterrupted(int(signum.item()))
            return
        self.guard.check()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.guard.deferring = True
        self.check(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.check(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.check(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)
        self.guard.deferring = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.guard.deferring = False


class FiniteLoss(pl.Callback):
    """Stops training on a NaN or infinite training loss (``train/loss``, auxiliary terms included)."""

    metric = "train/loss"

    def __init__(self, round_index: int = 0):
        self.round_index = round_index
        self._batch_idx = 0
        self._pending: list[tuple[int, int, int, torch.Tensor]] = []  # (step, epoch, batch, loss)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._pending.append((trainer.global_step, trainer.current_epoch, self._batch_idx, loss.detach()))
        if loss.device.type == "cpu" or len(self._pending) >= max(1, trainer.log_every_n_steps):
            self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        if not self._pending:
            return
        values = torch.stack([loss.float().reshape(()) for *_, loss in self._pending]).cpu()  # one sync
        pending, self._pending = self._pending, []
        bad = (~torch.isfinite(values)).nonzero()
        if not len(bad):
            return
        first = int(bad[0])
        step, epoch, batch, _ = pending[first]
        callback = trainer.checkpoint_callback  # checkpoints/last.ckpt is its "best" (save_top_k=1, no monitor)
        last = getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "")
        kept = f"; the last good checkpoint is {last}" if last else "; no checkpoint was written before it"
        raise TrainingDiverged(
            f"{self.metric} is {float(values[first])} at step {step} (round {self.round_index}, epoch {epoch}, "
            f"batch {batch}): training stopped{kept}"
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.check(trainer)  # before the file is written: a checkpoint never holds a diverged model

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)
