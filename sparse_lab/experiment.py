"""One run: compose -> instantiate -> fit/test (per round) -> profile -> results.json.

``run`` takes a resolved config and a run directory, so it works the same under the CLI (Hydra picks
the directory) and in tests (any temporary directory).
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import CheckpointIO
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import move_data_to_device
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from sparse_lab import checkpoints, distributed, lifecycle, resume, rng, skip, test_items
from sparse_lab.data import DATASETS
from sparse_lab.errors import UserError
from sparse_lab.hardware import TARGETS
from sparse_lab.hardware.deploy import deploy_and_time
from sparse_lab.loggers import build_loggers, finish, log_final, wandb_info
from sparse_lab.measure import ActivationSparsity, SpikeStats, count_macs
from sparse_lab.model_summary import ModelSummaryWithoutFlops
from sparse_lab.models import model_from_config
from sparse_lab.protocols import DataInfo, ExampleInput, TestItemGroups, TestItems
from sparse_lab.results import RunResults
from sparse_lab.sparsity import METHODS
from sparse_lab.summary import print_summary
from sparse_lab.tasks import build_task

log = logging.getLogger(__name__)


def options(group: DictConfig, drop: tuple[str, ...] = ()) -> dict:
    """A config group's entries, resolved (``name`` / ``_target_`` included: the registries read them)."""
    return {k: v for k, v in OmegaConf.to_container(group, resolve=True).items() if k not in drop}


# pl.Trainer arguments the run sets itself, with what the user sets instead; configs/trainer/default.yaml
# lists every other argument.
RUN_TRAINER_ARGS = {
    "accelerator": "the hardware target chooses it (hardware=<target>)",
    "logger": "choose loggers with logger=<option>",
    "callbacks": "the run adds the sparsity method, checkpointing, progress bar and model summary",
    "default_root_dir": "it is the run directory (hydra.run.dir)",
}


def build_trainer(cfg: DictConfig, accelerator: str, callbacks: list, loggers: list, run_dir: Path) -> pl.Trainer:
    trainer_args = options(cfg.trainer, drop=())
    clash = sorted(RUN_TRAINER_ARGS.keys() & trainer_args.keys())
    if clash:
        raise UserError(f"trainer.{clash[0]} cannot be set: {RUN_TRAINER_ARGS[clash[0]]}")

    def enabled(flag: str) -> bool:
        # null is Lightning's default and means on, except in barebones mode, which turns these features off.
        return trainer_args.get(flag) is not False and not trainer_args.get("barebones")

    if enabled("enable_checkpointing"):
        # checkpoints/last.ckpt after every epoch (what a resume continues from). Not `save_last=True,
        # save_top_k=0`: Lightning then writes last.ckpt only when training ends.
        callbacks = callbacks + [
            pl.callbacks.ModelCheckpoint(
                dirpath=run_dir / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False
            )
        ]
    if accelerator == "gpu" and trainer_args.get("deterministic") is True:
        # CUDA has no deterministic kernel for some backward ops the models use (adaptive pooling,
        # index_add): warn about those instead of refusing to train.
        trainer_args["deterministic"] = "warn"
    if enabled("enable_progress_bar"):
        callbacks = callbacks + [pl.callbacks.RichProgressBar()]
    if enabled("enable_model_summary"):
        callbacks = callbacks + [ModelSummaryWithoutFlops()]  # Lightning's FLOPs line would read 0: see its module
    plugins = trainer_args.pop("plugins", None)
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [] if plugins is None else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(checkpoints.AtomicCheckpointIO())  # a killed write leaves the previous checkpoint whole
    try:
        return pl.Trainer(
            accelerator=accelerator,
            default_root_dir=str(run_dir),
            logger=loggers or False,
            callbacks=callbacks,
            plugins=plugins,
            **trainer_args,
        )
    except (ValueError, TypeError, MisconfigurationException) as exc:  # a bad trainer.<arg> value
        raise UserError(f"trainer: {exc}") from None


def check_datamodule(datamodule) -> DataInfo:
    """A datamodule's ``info``, after checking it declares what a run reads (a plug-in may not)."""
    info = getattr(datamodule, "info", None)
    if not isinstance(info, DataInfo) or not isinstance(datamodule, ExampleInput):
        raise UserError(
            f"dataset {type(datamodule).__name__} must have `info` (a sparse_lab.protocols.DataInfo) and an "
            "`example_input()` method (one sample of batch size 1)"
        )
    return info


def profile_and_deploy(cfg, model, dense_reference, datamodule, target, run_dir: Path):
    """The trained model's cost on the target, final_model.pt, and the deployed program timed against the
    dense model as built: (target metrics, per-layer MACs, deployment metrics, deployment details)."""
    model = model.to(target.device)  # a method may have rebuilt it (e.g. narrowed channels)
    example = move_data_to_device(datamodule.example_input(), target.device)
    hw_metrics, macs_table = target.profile(model, example)
    model.cpu()  # final_model.pt loads anywhere
    checkpoints.atomic_save(model.state_dict(), run_dir / "final_model.pt")
    reference_macs = count_macs(dense_reference.to(target.device), example).dense
    deployed_metrics, deployed = deploy_and_time(
        model,
        dense_reference,
        example,
        run_dir / "deployed.pt2",
        device=target.device,
        batch_size=getattr(datamodule, "batch_size", None),
        reference_macs=reference_macs,
        target_macs=hw_metrics["macs/target"],
        export=cfg.deploy.export,
        measure=cfg.deploy.latency,
    )
    return hw_metrics, macs_table, deployed_metrics, deployed


def last_validation(metrics) -> dict[str, float]:
    """The validation metrics of the last epoch (what a hyperparameter is chosen on; test is never looked at)."""
    return {key: float(value) for key, value in metrics.items() if key.startswith("val/")}


def save_test_items(task, datamodule, world_size: int, run_dir: Path) -> dict | None:
    """The last test item by item (test_items.npz), when the task records it, with the groups of items the
    data says fail together; a multi-process test sees each rank's share only (padded by the sampler), so
    it is recorded by one-process runs."""
    items = task.test_items() if isinstance(task, TestItems) else None
    if items is None or world_size > 1:
        return None
    groups = datamodule.test_item_groups() if isinstance(datamodule, TestItemGroups) else None
    if groups is not None:  # a limited test (limit_test_batches) saw the first items of the unshuffled loader
        groups = groups[: len(items["values"])]
    return test_items.save(run_dir, items["metric"], items["values"], items["key"], groups)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate one configuration; return the results dictionary (also in results.json).

    ``cfg.resume`` (a run directory): continue that interrupted run, with its own config, exactly
    (sparse_lab/resume.py). ``cfg.skip_completed``: return the results of a completed run with the same
    resolved config instead of running (sparse_lab/skip.py)."""
    run_dir = Path(run_dir)
    point = None
    if cfg.get("resume"):
        point = resume.prepare(Path(cfg.resume))  # checked before anything is written
        # The run's own config; `resume` stays set so that the ranks of a multi-process run resume too.
        run_dir, cfg = point.run_dir, OmegaConf.create({**point.config, "resume": str(point.run_dir)})
        log.info("resuming %s from %s", run_dir, point.describe())
    elif cfg.get("skip_completed") and (done := skip.completed_run(OmegaConf.to_container(cfg, resolve=True), run_dir)):
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    if (launched := distributed.launch_if_needed(cfg, run_dir)) is not None:
        return launched  # this process supervised the ranks; rank 0 wrote results.json
    rank_zero = distributed.global_rank() == 0  # the only rank that writes files
    config = point.config if point else OmegaConf.to_container(cfg, resolve=True)
    results = RunResults(run_dir, config, write=rank_zero, previous=point.results if point else None)
    digest = checkpoints.config_digest(config)  # every checkpoint of this run carries it
    if point is not None and point.results.get("torch_threads"):  # CPU reductions depend on the thread count
        torch.set_num_threads(int(point.results["torch_threads"]))
    results.data["torch_threads"] = torch.get_num_threads()
    guard = lifecycle.SignalGuard().install()  # SIGINT / SIGTERM: stop at a batch end, status "interrupted"
    loggers = []
    try:
        # Everything that validates user input is built before any training starts.
        method = METHODS.from_config(options(cfg.sparsity))
        target = TARGETS.from_config(options(cfg.hardware))
        datamodule = DATASETS.from_config(options(cfg.data))
        info = check_datamodule(datamodule)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        model_options = options(cfg.model, drop=("optim",))
        model = model_from_config(model_options, info)
        dense_reference = copy.deepcopy(model)  # timed against the deployed model: as built, before attach
        method.attach(model, seed=cfg.seed, example_input=datamodule.example_input())
        task = build_task(info, model, options(cfg.model.optim) if "optim" in cfg.model else {})
        loggers = build_loggers(cfg, run_dir, run_name=run_dir.name, wandb_id=point.wandb_id if point else None)
        if point is not None and rank_zero:
            resume.keep_csv_rows(loggers)  # metrics.csv goes on from where it was
        if rank_zero and (wandb := wandb_info(loggers)):
            results.update(wandb=wandb)  # project, group, run id and local run directory
        # Measured on the test set, hooks removed after each test; spike statistics priced by the target.
        activations = ActivationSparsity()
        measures = [activations, SpikeStats(target.energy_uj)]  # SpikeStats: models with spiking layers only
        agreement = distributed.MaskAgreement(method)  # multi-process runs: the same masks on every rank

        if point is not None:  # a resume keeps the rounds that completed; the others start over
            results.data["rounds"] = results.data["rounds"][: len(point.rounds)]
        for round_index in range(method.rounds):
            method.begin_round(round_index, task)
            done = point.round_state(round_index) if point else None
            if done is not None and round_index < method.rounds - 1:
                checkpoints.restore_round(done, task.model, method)  # completed before the interruption
                continue
            run_callbacks = [
                lifecycle.StopOnSignal(guard),
                lifecycle.FiniteLoss(round_index),
                checkpoints.RunState(round_index, digest),  # round, config digest and RNG in every checkpoint
            ]
            callbacks = [method, *measures, agreement, *run_callbacks]
            trainer = build_trainer(cfg, target.accelerator, callbacks, loggers, run_dir)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*does not have many workers.*")
                warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")  # ours
                if done is not None:  # the last round had completed: tested again for the activation measures
                    checkpoints.restore_round(done, task.model, method)
                    test = trainer.test(task, datamodule=datamodule, verbose=False)[0]
                    val = last_validation(results.data["rounds"][round_index])
                    rng.restore(done["rng"])
                    global_step = done["global_step"]
                    continue
                ckpt_path = point.checkpoint_for(round_index) if point else None
                trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
                val = last_validation(trainer.callback_metrics)
                test = trainer.test(task, datamodule=datamodule, verbose=False)[0]
            global_step = trainer.global_step
            results.data["rounds"].append({"round": round_index, **val, **test, **method.summary()})
            results.write()
            if rank_zero and trainer.checkpoint_callback is not None:  # what a resume replays this round from
                checkpoints.save_round(run_dir, round_index, task.model, method, digest, test, global_step)
        if agreement.checks:
            results.update(distributed=agreement.report(trainer.world_size))
        if not rank_zero:  # the other ranks trained and tested; profiling and deployment are rank 0's
            finish(loggers)
            return results.data

        hw_metrics, macs_table, deployed_metrics, deployed = profile_and_deploy(
            cfg, task.model, dense_reference, datamodule, target, run_dir
        )
        items = save_test_items(task, datamodule, trainer.world_size, run_dir)
        metrics = {**val, **test, **method.summary(), **activations.summary(), **hw_metrics, **deployed_metrics}
        log_final(loggers, metrics, step=global_step, layers=method.layer_table())
        results.update(
            metrics=metrics,
            sparsity=method.details(),
            layers=method.layer_table(),
            macs_by_layer=macs_table,
            activations_by_layer=activations.table(),
            deployed=deployed,
            test_items=items,
        )
        results.finish("completed")
        print_summary(cfg, results.data)
        finish(loggers)
        return results.data
    except BaseException as exc:
        interrupted = lifecycle.interruption(exc)  # a signal (Lightning's SIGTERMException included), else None
        if interrupted is not None:
            interrupted.run_dir = run_dir
            results.finish("interrupted", error=f"{interrupted}; {lifecycle.resume_hint(run_dir)}")
        else:
            message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            results.finish("failed", error=message)
        finish(loggers, failed=True)
        if interrupted is not None and interrupted is not exc:
            raise interrupted from None
        raise
    finally:
        guard.uninstall()
