"""configs/trainer lists every pl.Trainer argument, so `trainer.<arg>=<value>` works without `+`, and a value
equal to Lightning's default behaves as if it were not passed."""

import inspect
import json

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from rich import get_console

from sparse_lab.cli import CONFIG_DIR
from sparse_lab.errors import UserError
from sparse_lab.experiment import RUN_TRAINER_ARGS, build_trainer
from sparse_lab.model_summary import ModelSummaryWithoutFlops
from tests.conftest import run_cli

SIGNATURE = {name: p.default for name, p in inspect.signature(pl.Trainer.__init__).parameters.items() if name != "self"}
# The keys configs/trainer/default.yaml sets to something other than Lightning's default (null = Lightning decides).
PROJECT_CHOICES = {
    "max_epochs",
    "devices",
    "precision",
    "deterministic",
    "log_every_n_steps",
    "enable_checkpointing",
    "enable_progress_bar",
}


def trainer_cfg(*overrides: str, option: str = "default"):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[f"trainer={option}", "logger=none", *overrides])


def build(tmp_path, drop: tuple[str, ...] = (), **values) -> pl.Trainer:
    """build_trainer on the default trainer config, with the ``drop`` keys left out and ``values`` set."""
    cfg = trainer_cfg()
    trainer = OmegaConf.to_container(cfg.trainer)
    cfg.trainer = {**{k: v for k, v in trainer.items() if k not in drop}, **values}
    return build_trainer(cfg, "cpu", [], [], tmp_path)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml")))
def test_every_trainer_argument_is_listed_except_those_the_run_sets(option):
    assert set(RUN_TRAINER_ARGS) <= set(SIGNATURE)  # Lightning renamed one the run passes: update build_trainer
    keys = set(trainer_cfg(option=option).trainer)
    missing, unknown = set(SIGNATURE) - set(RUN_TRAINER_ARGS) - keys, keys - set(SIGNATURE)
    assert not missing, f"pl.Trainer arguments missing from configs/trainer/default.yaml: {sorted(missing)}"
    assert not unknown, f"not pl.Trainer arguments: {sorted(unknown)}"
    assert not keys & set(RUN_TRAINER_ARGS)


def test_the_default_holds_lightnings_defaults_but_for_the_projects_choices():
    cfg = OmegaConf.to_container(trainer_cfg().trainer)
    differ = {k for k, v in cfg.items() if v != SIGNATURE[k]}
    assert differ == PROJECT_CHOICES, "a Lightning default changed, or the config left one: say which in the YAML"


def test_any_argument_is_overridden_without_plus():
    cfg = trainer_cfg("trainer.limit_train_batches=2", "trainer.strategy=ddp", "trainer.max_time=00:00:10:00")
    assert (cfg.trainer.limit_train_batches, cfg.trainer.strategy, cfg.trainer.max_time) == (2, "ddp", "00:00:10:00")


def fingerprint(trainer: pl.Trainer) -> dict:
    """What a run's behaviour depends on: the callbacks and every setting the Trainer resolved from its arguments."""
    names = (
        "max_epochs",
        "min_epochs",
        "max_steps",
        "min_steps",
        "limit_train_batches",
        "limit_val_batches",
        "limit_test_batches",
        "limit_predict_batches",
        "overfit_batches",
        "val_check_interval",
        "check_val_every_n_epoch",
        "num_sanity_val_steps",
        "log_every_n_steps",
        "accumulate_grad_batches",
        "gradient_clip_val",
        "gradient_clip_algorithm",
        "fast_dev_run",
        "num_nodes",
        "num_devices",
        "precision",
        "barebones",
        "reload_dataloaders_every_n_epochs",
        "_detect_anomaly",
        "enable_autolog_hparams",
        "_model_registry",
    )
    return {
        **{name: getattr(trainer, name) for name in names},
        "callbacks": [type(cb).__name__ for cb in trainer.callbacks],
        "checkpoint_dir": trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None,
        "strategy": type(trainer.strategy).__name__,
        "accelerator": type(trainer.accelerator).__name__,
        "profiler": type(trainer.profiler).__name__,
        "inference_mode": trainer.test_loop.inference_mode,
        "distributed_sampler": trainer._accelerator_connector.use_distributed_sampler,
        "sync_batchnorm": trainer._accelerator_connector._layer_sync is not None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def test_lightnings_default_values_build_the_same_trainer_as_leaving_them_out(tmp_path):
    listed = fingerprint(build(tmp_path))
    left_out = fingerprint(build(tmp_path, drop=tuple(set(SIGNATURE) - PROJECT_CHOICES)))
    assert listed == left_out
    assert listed["callbacks"].count("ModelSummaryWithoutFlops") == 1
    assert {"ModelCheckpoint", "RichProgressBar"} <= set(listed["callbacks"])
    assert listed["checkpoint_dir"] == str(tmp_path / "checkpoints")


@pytest.mark.parametrize(
    "flag,callback",
    [
        ("enable_checkpointing", "ModelCheckpoint"),
        ("enable_progress_bar", "RichProgressBar"),
        ("enable_model_summary", "ModelSummaryWithoutFlops"),
    ],
)
def test_a_null_flag_is_lightnings_default_on_and_false_is_off(flag, callback, tmp_path):
    on = fingerprint(build(tmp_path, **{flag: True}))
    assert fingerprint(build(tmp_path, **{flag: None})) == on and callback in on["callbacks"]
    off = fingerprint(build(tmp_path, **{flag: False}))  # Lightning refuses the callback when its flag is off
    assert callback not in off["callbacks"]


def test_barebones_turns_the_runs_own_callbacks_off_too(tmp_path):
    trainer = build(
        tmp_path,
        barebones=True,
        enable_checkpointing=False,
        enable_progress_bar=False,
        log_every_n_steps=0,
        num_sanity_val_steps=0,
    )
    assert trainer.barebones and trainer.checkpoint_callback is None and trainer.progress_bar_callback is None
    assert not any(isinstance(cb, pl.callbacks.ModelSummary) for cb in trainer.callbacks)
    with pytest.raises(UserError, match="barebones=True, enable_checkpointing=True"):
        build(tmp_path, barebones=True)  # Lightning's own message, as one line


@pytest.mark.parametrize(
    "values,message",
    [
        ({"accelerator": "gpu"}, "trainer.accelerator cannot be set: the hardware target chooses it"),
        ({"logger": False}, "trainer.logger cannot be set"),
        ({"gradient_clip_algorithm": "sideways"}, "trainer: `gradient_clip_algorithm` sideways is invalid"),
        ({"strategy": "nosuch"}, "trainer: You selected an invalid strategy name"),
        ({"nosuch": 1}, "trainer: .*unexpected keyword argument 'nosuch'"),
    ],
)
def test_bad_trainer_arguments_are_user_errors(values, message, tmp_path):
    with pytest.raises(UserError, match=message):
        build(tmp_path, **values)


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 4)
        self.example_input_array = torch.randn(2, 8)  # Lightning counts FLOPs only with an example input

    def forward(self, x):
        return self.layer(x)


@pytest.mark.parametrize("summary", [pl.callbacks.RichModelSummary, ModelSummaryWithoutFlops])
def test_the_model_summary_leaves_out_flops(summary, tmp_path):
    callback = summary()
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, callbacks=[callback], default_root_dir=tmp_path)
    with get_console().capture() as captured:
        callback.on_fit_start(trainer, Tiny())
    text = captured.get()
    assert "Total params" in text and "layer" in text and "Linear" in text and "[2, 8]" in text
    if summary is ModelSummaryWithoutFlops:
        assert "FLOPs" not in text and "Flops" not in text
    else:  # Lightning's own: the figures this callback exists to hide
        assert "Total FLOPs: 128" in text


@pytest.mark.e2e
def test_the_default_trainer_takes_any_argument_on_the_command_line(tmp_path):
    result = run_cli(
        "train",
        "trainer.limit_train_batches=2",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0",
        "logger=none",
        "deploy.export=false",  # not what this test is about
        "deploy.latency=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (results_path,) = tmp_path.glob("outputs/runs/*/*/results.json")
    results = json.loads(results_path.read_text())
    assert results["status"] == "completed" and results["config"]["trainer"]["limit_train_batches"] == 2
    checkpoint = torch.load(results_path.parent / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2  # one epoch of two batches
    assert "Total params" in result.stdout and "FLOPs" not in result.stdout  # the model summary, minus FLOPs
