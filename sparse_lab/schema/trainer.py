"""Schema of ``configs/trainer/*.yaml``: the pytorch_lightning.Trainer arguments, with the values Lightning
accepts (tests/test_schema.py keeps the keys equal to Trainer's signature and the precisions to its
``Literal``s), minus those the run sets itself."""

from __future__ import annotations

from sparse_lab.schema.fields import (
    Any_,
    Bool,
    Choice,
    Float,
    Forbidden,
    Int,
    List,
    Schema,
    SchemaError,
    Section,
    Str,
    Union,
)

# pl.Trainer arguments the run sets itself, with what the user sets instead (experiment.build_trainer).
RUN_TRAINER_ARGS = {
    "accelerator": "the hardware target chooses it (hardware=<target>)",
    "logger": "choose loggers with logger=<option>",
    "callbacks": "the run adds the sparsity method, checkpointing, progress bar and model summary",
    "default_root_dir": "it is the run directory (hydra.run.dir)",
}

PRECISIONS = (
    "64-true",
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
    64,
    32,
    16,
    "64",
    "32",
    "16",
    "bf16",
)
DURATION = Str(pattern=r"\s*\d+:\d\d:\d\d:\d\d\s*", what="a duration 'DD:HH:MM:SS'")


class Duration(Schema):
    """A duration as a mapping, e.g. ``{hours: 12}`` (datetime.timedelta's keyword arguments)."""

    owner = "a duration"
    weeks = Float(ge=0)
    days = Float(ge=0)
    hours = Float(ge=0)
    minutes = Float(ge=0)
    seconds = Float(ge=0)
    milliseconds = Float(ge=0)
    microseconds = Float(ge=0)


DURATION_MAP = Section(Duration, what="a mapping such as {hours: 12}")
BATCHES = Union(Int(ge=0), Float(ge=0, le=1), nullable=True)  # a count, or a fraction of the split


class Trainer(Schema):
    owner = "the Lightning Trainer (configs/trainer/default.yaml lists every argument)"
    accelerator = Forbidden(RUN_TRAINER_ARGS["accelerator"])
    logger = Forbidden(RUN_TRAINER_ARGS["logger"])
    callbacks = Forbidden(RUN_TRAINER_ARGS["callbacks"])
    default_root_dir = Forbidden(RUN_TRAINER_ARGS["default_root_dir"])
    # Hardware and distribution.
    strategy = Str()
    devices = Union(Int(ge=1), Choice(-1), Str(), List(Int(ge=0), min_length=1))
    num_nodes = Int(ge=1)
    precision = Choice(*PRECISIONS, nullable=True)
    sync_batchnorm = Bool()
    use_distributed_sampler = Bool()
    plugins = Any_(nullable=True)
    # How long to train.
    fast_dev_run = Union(Bool(), Int(ge=0))
    max_epochs = Union(Int(ge=1), Choice(-1), nullable=True)
    min_epochs = Int(ge=0, nullable=True)
    max_steps = Union(Int(ge=1), Choice(-1))
    min_steps = Int(ge=0, nullable=True)
    max_time = Union(DURATION, DURATION_MAP, nullable=True)
    # How much of each split an epoch sees.
    limit_train_batches = BATCHES
    limit_val_batches = BATCHES
    limit_test_batches = BATCHES
    limit_predict_batches = BATCHES
    overfit_batches = Union(Int(ge=0), Float(ge=0, le=1))
    # Validation.
    val_check_interval = Union(Int(ge=1), Float(gt=0, le=1), DURATION, DURATION_MAP, nullable=True)
    check_val_every_n_epoch = Int(ge=1, nullable=True)
    num_sanity_val_steps = Int(ge=-1, nullable=True)
    # Optimisation.
    accumulate_grad_batches = Int(ge=1)
    gradient_clip_val = Float(ge=0, nullable=True)
    gradient_clip_algorithm = Choice("norm", "value", nullable=True)
    # Reproducibility, speed, debugging and output.
    deterministic = Union(Bool(), Choice("warn"), nullable=True)
    benchmark = Bool(nullable=True)
    inference_mode = Bool()
    profiler = Choice("simple", "advanced", "pytorch", "xla", nullable=True)
    detect_anomaly = Bool()
    barebones = Bool()
    reload_dataloaders_every_n_epochs = Int(ge=0)
    log_every_n_steps = Int(ge=0, nullable=True)
    enable_checkpointing = Bool(nullable=True)
    enable_progress_bar = Bool(nullable=True)
    enable_model_summary = Bool(nullable=True)
    enable_autolog_hparams = Bool()
    model_registry = Str(nullable=True)

    @classmethod
    def check(cls, values, at):
        if values.get("max_epochs") == -1 and values.get("max_steps", -1) == -1:
            raise SchemaError(
                f"{at('max_epochs')}=-1 (no epoch limit) needs {at('max_steps')} >= 1: the learning-rate "
                "schedule and the sparsity schedules are laid out over the run's length"
            )

    @classmethod
    def warnings(cls, values, at):
        if values.get("limit_train_batches") == 0:
            return [f"{at('limit_train_batches')}=0: the run trains nothing (it only validates and tests)"]
        return []
