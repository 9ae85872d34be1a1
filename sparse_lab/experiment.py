"""One run: compose -> instantiate -> fit/test (per round) -> profile -> results.json.

``run`` takes a resolved config and a run directory, so it works the same under the CLI (Hydra picks
the directory) and in tests (any temporary directory).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import move_data_to_device
import torch
from omegaconf import DictConfig, OmegaConf

from sparse_lab.data import build_datamodule
from sparse_lab.errors import UserError
from sparse_lab.hardware.targets import build_target
from sparse_lab.loggers import build_loggers, finish, log_final
from sparse_lab.models import build_model
from sparse_lab.results import RunResults
from sparse_lab.sparsity import build_method
from sparse_lab.summary import print_summary
from sparse_lab.tasks import build_task
from sparse_lab.tasks.activations import ActivationSparsity

log = logging.getLogger(__name__)


def options(group: DictConfig, drop: tuple[str, ...] = ("name",)) -> dict:
    """A config group's entries as constructor keyword arguments."""
    return {k: v for k, v in OmegaConf.to_container(group, resolve=True).items() if k not in drop}


def build_trainer(cfg: DictConfig, accelerator: str, callbacks: list, loggers: list, run_dir: Path) -> pl.Trainer:
    trainer_args = options(cfg.trainer, drop=())
    if trainer_args.get("enable_checkpointing", True):
        callbacks = callbacks + [
            pl.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)
        ]
    if accelerator == "gpu" and trainer_args.get("deterministic") is True:
        # CUDA has no deterministic kernel for some backward ops the models use (adaptive pooling,
        # index_add): warn about those instead of refusing to train.
        trainer_args["deterministic"] = "warn"
    if trainer_args.get("enable_progress_bar", True):
        callbacks = callbacks + [pl.callbacks.RichProgressBar()]
    return pl.Trainer(
        accelerator=accelerator,
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=callbacks,
        **trainer_args,
    )


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate one configuration; return the results dictionary (also in results.json)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    results = RunResults(run_dir, OmegaConf.to_container(cfg, resolve=True))
    loggers = []
    try:
        # Everything that validates user input is built before any training starts.
        method = build_method(cfg.sparsity.name, **options(cfg.sparsity))
        target = build_target(cfg.hardware.name, **options(cfg.hardware))
        datamodule = build_datamodule(cfg.data.name, **options(cfg.data))
        info = datamodule.info
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        model_cfg = options(cfg.model, drop=("name", "optim"))
        model = build_model(cfg.model.name, modality=info.modality, num_classes=info.num_classes, **info.sizes, **model_cfg)
        method.attach(model, seed=cfg.seed, example_input=datamodule.example_input())
        task = build_task(info, model, options(cfg.model.optim, drop=()))
        loggers = build_loggers(cfg, run_dir, run_name=run_dir.name)
        activations = ActivationSparsity()  # measured on the test set, hooks removed after each test

        for round_index in range(method.rounds):
            method.begin_round(round_index, task)
            trainer = build_trainer(cfg, target.accelerator, [method, activations], loggers, run_dir)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*does not have many workers.*")
                trainer.fit(task, datamodule=datamodule)
                test = trainer.test(task, datamodule=datamodule, verbose=False)[0]
            results.data["rounds"].append({"round": round_index, **test, **method.summary()})
            results.write()

        model = task.model.to(target.device)  # a method may have rebuilt it (e.g. narrowed channels)
        example = move_data_to_device(datamodule.example_input(), target.device)
        hw_metrics, macs_table = target.profile(model, example)
        model.cpu()  # final_model.pt loads anywhere
        metrics = {**test, **method.summary(), **activations.summary(), **hw_metrics}
        torch.save(model.state_dict(), run_dir / "final_model.pt")
        log_final(loggers, metrics, step=trainer.global_step)
        results.update(metrics=metrics, sparsity=method.details(), layers=method.layer_table(), macs_by_layer=macs_table,
                       activations_by_layer=activations.table())
        results.finish("completed")
        print_summary(cfg, results.data)
        finish(loggers)
        return results.data
    except BaseException as exc:
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        results.finish("failed", error=message)
        finish(loggers, failed=True)
        raise
