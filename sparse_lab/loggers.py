"""Metric loggers for a run: CSV and Weights & Biases (online when logged in, offline otherwise)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger

from sparse_lab.errors import UserError

WANDB_MODES = ("auto", "online", "offline")


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """'auto' means online only when credentials exist, so W&B never prompts and never blocks."""
    if mode not in WANDB_MODES:
        raise UserError(f"logger.wandb.mode must be one of {', '.join(WANDB_MODES)}, got {mode!r}")
    if mode == "auto":
        env = os.environ.get("WANDB_MODE")
        if env in ("online", "offline", "disabled"):
            return env
        return "online" if wandb_logged_in() else "offline"
    return mode


def build_loggers(cfg: DictConfig, run_dir: Path, run_name: str) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    if cfg.logger.wandb:
        from pytorch_lightning.loggers import WandbLogger

        wb = cfg.logger.wandb
        mode = resolve_wandb_mode(wb.mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            WandbLogger(
                project=wb.project,
                entity=wb.entity,
                name=run_name,
                group=wb.group,
                tags=list(wb.tags),
                save_dir=str(run_dir),
                offline=mode == "offline",
                mode=mode,
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


def log_final(loggers: list[Logger], metrics: dict, step: int) -> None:
    """The run's final figures, to every logger (W&B also gets them in the run summary)."""
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update(metrics)
        logger.save()


def finish(loggers: list[Logger], failed: bool = False) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish(exit_code=1 if failed else 0)
        else:
            logger.finalize("failed" if failed else "success")
