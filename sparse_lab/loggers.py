"""Metric loggers for a run: CSV and Weights & Biases (online when logged in, offline otherwise)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger

from sparse_lab.errors import UserError
from sparse_lab.registry import component_name
from sparse_lab.results import flatten_config

WANDB_MODES = ("auto", "online", "offline")
TAG_GROUPS = ("data", "model", "sparsity", "hardware")  # their names tag every W&B run


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


def run_tags(config: dict, extra: list | tuple = ()) -> list[str]:
    """The run's data, model, sparsity method and hardware names, then the user's ``logger.wandb.tags``."""
    tags = [component_name(config[group] or {}) for group in TAG_GROUPS if isinstance(config.get(group), dict)]
    for tag in extra:
        if str(tag) not in tags:
            tags.append(str(tag))
    return tags


def sweep_name() -> str | None:
    """The name of the sweep this run belongs to (its Hydra sweep folder's name), or None outside a
    multirun, and outside Hydra altogether (tests call ``experiment.run`` directly)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(str(hydra_cfg.sweep.dir)).name or None


def wandb_group(explicit: str | None) -> str | None:
    """``logger.wandb.group`` when set, else the sweep's name (None for a single run)."""
    return str(explicit) if explicit else sweep_name()


def build_loggers(cfg: DictConfig, run_dir: Path, run_name: str, wandb_id: str | None = None) -> list[Logger]:
    """``wandb_id``: a resumed run's W&B run id; the same W&B run continues (``resume="allow"``)."""
    loggers: list[Logger] = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    if cfg.logger.wandb:
        from pytorch_lightning.loggers import WandbLogger

        wb = cfg.logger.wandb
        mode = resolve_wandb_mode(wb.mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        config = OmegaConf.to_container(cfg, resolve=True)
        loggers.append(
            WandbLogger(
                project=wb.project,
                entity=wb.entity,
                name=run_name,
                group=wandb_group(wb.group),
                job_type=component_name(config["sparsity"]),
                tags=run_tags(config, wb.tags or ()),
                save_dir=str(run_dir),
                offline=mode == "offline",
                mode=mode,
                config=flatten_config(config),
                **({"id": wandb_id, "resume": "allow"} if wandb_id else {}),
            )
        )
    return loggers


def wandb_logger(loggers: list[Logger]) -> Logger | None:
    return next((logger for logger in loggers if type(logger).__name__ == "WandbLogger"), None)


def wandb_info(loggers: list[Logger]) -> dict | None:
    """Where the W&B run went, for results.json: project, group, run id and its local directory."""
    logger = wandb_logger(loggers)
    if logger is None:
        return None
    run = logger.experiment
    return {
        "project": run.project,
        "group": run.group or None,
        "job_type": run.job_type,
        "id": run.id,
        "name": run.name,
        "dir": str(Path(run.dir).parent),  # <run_dir>/wandb/offline-run-*/ (run.dir is its files/)
        "mode": "offline" if run.offline else "online",
    }


LAYER_COLUMNS = ("name", "shape", "numel", "nonzero", "density", "target_density")


def layer_rows(layers: list[dict]) -> list[list]:
    """results["layers"] as table rows; a shape reads 64x3x3x3."""
    rows = []
    for layer in layers:
        row = [layer.get(column) for column in LAYER_COLUMNS]
        row[1] = "x".join(str(d) for d in row[1]) if isinstance(row[1], (list, tuple)) else row[1]
        rows.append(row)
    return rows


def log_final(loggers: list[Logger], metrics: dict, step: int, layers: list[dict] | None = None) -> None:
    """The run's final figures, to every logger (W&B also gets them in the run summary, and the
    per-layer density table as a ``wandb.Table`` named ``layers``)."""
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update(metrics)
            if layers:
                logger.log_table("layers", columns=list(LAYER_COLUMNS), data=layer_rows(layers), step=step)
        logger.save()


def finish(loggers: list[Logger], failed: bool = False) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish(exit_code=1 if failed else 0)
        else:
            logger.finalize("failed" if failed else "success")
