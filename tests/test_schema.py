"""The config schema (sparse_lab/schema): every key in configs/ is declared, the declared keys are the
components' constructor arguments, the allowed values are the modules' own, and bad values give one line
naming the key, the value and what is allowed. Bad values are checked here on composed configs, without
the CLI's round trip (tests/test_bad_inputs.py runs the CLI)."""

from __future__ import annotations

import copy
import inspect
import typing
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from sparse_lab.cli import CONFIG_DIR
from sparse_lab.schema import Config, SchemaError, suggest_key, unknown_override, validate_config
from sparse_lab.schema import data as data_schema
from sparse_lab.schema import model as model_schema
from sparse_lab.schema import sparsity as sparsity_schema
from sparse_lab.schema.fields import Choose, Section, Union, show
from sparse_lab.schema.hardware import TARGETS as TARGET_SCHEMAS
from sparse_lab.schema.trainer import PRECISIONS, RUN_TRAINER_ARGS, Trainer

GROUPS = ("data", "model", "sparsity", "hardware", "trainer", "logger", "paths")
# A model per data modality, so that a dataset option composes into a valid config.
MODEL_FOR = {"image": "vit", "video": "delta_cnn", "point_cloud": "e3dsnn", "point_cloud_pair": "sctn"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    """Every option of every group (and every experiment), composed and resolved: ``"group=option"`` ->
    config."""
    from omegaconf import OmegaConf

    composed = {}
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for group in [*GROUPS, "experiment"]:
            for option in options(group):
                overrides = [f"{group}={option}"]
                if group == "data":
                    modality = data_schema_for(option).modality
                    overrides.append(f"model={MODEL_FOR[modality]}")  # the command line's data= wins over its default
                cfg = compose("config", overrides=overrides)
                composed[f"{group}={option}"] = OmegaConf.to_container(cfg, resolve=True)
    return composed


def data_schema_for(option: str):
    name = yaml.safe_load((CONFIG_DIR / "data" / f"{option}.yaml").read_text())["name"]
    return {s.registered_as: s for s in data_schema.DATASETS}[name]


# -- coverage: the next key added to configs/ is not missed -------------------------------------------------
def leaf_paths(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            paths += leaf_paths(value, (*prefix, key))
        else:
            paths.append((*prefix, key))
    return paths


def declared(path: tuple[str, ...], config: dict) -> bool:
    """Whether the schema declares the key at ``path`` of ``config`` (following ``name:`` dispatch)."""
    schema, values = Config, config
    for i, part in enumerate(path):
        if part in ("name", "_target_", "_schema_") and i > 0:
            return True  # the dispatch keys of a group
        field = schema.fields.get(part)
        if field is None:
            return False
        if i == len(path) - 1:
            return True
        values = values.get(part) if isinstance(values, dict) else None
        if isinstance(field, Union):
            field = next((o for o in field.options if isinstance(o, Section)), field)
        if isinstance(field, Choose):
            schema = field.schema_for(part, values or {})
        elif isinstance(field, Section):
            schema = field.schema
        else:
            return False
    return True


@pytest.mark.parametrize("group", [*GROUPS, "experiment"])
def test_every_key_in_configs_has_a_schema(group, configs):
    for option in options(group):
        path = CONFIG_DIR / group / f"{option}.yaml"
        text = path.read_text()
        raw = yaml.safe_load(text) or {}
        raw.pop("defaults", None)
        prefix = () if "@package _global_" in text or group == "experiment" else (group,)
        config = configs[f"{group}={option}"]
        for leaf in leaf_paths(raw):
            if (*prefix, *leaf)[0] == "hydra":
                continue  # Hydra's own config (a sweeper's settings): Hydra checks it, the job never sees it
            key = ".".join((*prefix, *leaf))
            assert declared((*prefix, *leaf), config), (
                f"configs/{group}/{option}.yaml: key {key} has no schema (declare it in sparse_lab/schema/)"
            )


def test_config_yaml_keys_have_a_schema(configs):
    raw = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())
    raw.pop("defaults")
    for leaf in leaf_paths(raw):
        assert declared(leaf, configs["data=digits"]), f"configs/config.yaml: key {'.'.join(leaf)} has no schema"


@pytest.mark.parametrize("group", [*GROUPS, "experiment"])
def test_every_shipped_option_validates_without_warnings(group, configs):
    for option in options(group):
        assert validate_config(configs[f"{group}={option}"]) == [], f"{group}={option}"


# -- declared once: the schema agrees with the code it describes ---------------------------------------------
def constructor_keys(fn) -> tuple[set[str], bool]:
    """(explicit keyword arguments of ``fn`` and of the bases its ``**kwargs`` reach, whether it takes any)."""
    if inspect.isclass(fn):
        keys, open_ = set(), False
        for klass in fn.__mro__:
            if "__init__" not in vars(klass) or klass.__module__.startswith(("pytorch_lightning", "builtins")):
                continue
            params = inspect.signature(klass.__init__).parameters
            keys |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
            if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                return keys, open_
            open_ = True
        return keys, open_
    params = inspect.signature(fn).parameters
    keys = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return keys, any(p.kind == p.VAR_KEYWORD for p in params.values())


DATA_SIZES = {"num_classes", "image_size", "in_chans", "num_frames", "grid_size", "num_points"}  # the data's


def test_sparsity_schemas_are_the_methods_arguments():
    from sparse_lab.sparsity import METHODS

    schemas = {s.registered_as: s for s in sparsity_schema.METHODS}
    assert set(schemas) == set(METHODS.names())
    for name, schema in schemas.items():
        keys, _ = constructor_keys(METHODS.get(name))
        declared_keys = set(schema.fields)
        assert declared_keys <= keys, f"{name}: schema keys the method does not take: {declared_keys - keys}"
        # A method may take base keys it ignores (lottery and masksparsity set their own sparsity).
        ignored = {"sparsity", "distribution"} if name in ("lottery", "masksparsity", "dense", "nm") else set()
        assert keys - ignored <= declared_keys, f"{name}: arguments without a schema: {keys - ignored - declared_keys}"


def test_model_schemas_are_the_models_arguments():
    from sparse_lab.models import MODELS
    from sparse_lab.models.delta import DeltaCNN
    from sparse_lab.models.sctn import SCTN
    from sparse_lab.models.stvit import SemanticTokenViT
    from sparse_lab.models.vit import VisionTransformer

    behind_kwargs = {"vit": VisionTransformer, "stvit": SemanticTokenViT, "sctn": SCTN, "delta_cnn": DeltaCNN}
    schemas = {s.registered_as: s for s in model_schema.MODELS}
    assert set(schemas) == set(MODELS.names())
    for name, schema in schemas.items():
        keys, _ = constructor_keys(MODELS.get(name))
        if name in behind_kwargs:
            keys |= constructor_keys(behind_kwargs[name])[0]
        keys -= DATA_SIZES
        assert set(schema.fields) - {"optim"} == keys, name
        constructor = MODELS.get(name)
        assert (schema.modality, schema.default_data) == (constructor.input_modality, constructor.default_data)


def test_data_schemas_are_the_datamodules_arguments_and_modalities(tmp_path):
    from sparse_lab.data import DATASETS
    from sparse_lab.data.flow3d import generate_scene
    from tests.data.test_image_data import write_imagefolder

    write_imagefolder(tmp_path / "imagenet")
    schemas = {s.registered_as: s for s in data_schema.DATASETS}
    assert set(schemas) == set(DATASETS.names())
    for name, schema in schemas.items():
        klass = typing.get_type_hints(DATASETS.get(name))["return"]
        keys, _ = constructor_keys(klass)
        if name == "flow3d":
            keys |= constructor_keys(generate_scene)[0] - {"rng"}
        assert set(schema.fields) == keys, name
        datamodule = DATASETS.build(name, **({"data_dir": str(tmp_path)} if "data_dir" in keys else {}))
        assert schema.modality == datamodule.info.modality, name


def test_target_and_optimizer_schemas_are_their_arguments():
    import torch

    from sparse_lab.hardware import TARGETS

    for schema in TARGET_SCHEMAS:
        assert set(schema.fields) == constructor_keys(TARGETS.get(schema.registered_as))[0], schema.registered_as
    assert {s.registered_as for s in TARGET_SCHEMAS} == set(TARGETS.names())
    torch_optimizers = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    for schema in model_schema.OPTIMIZERS:
        assert set(schema.fields) <= constructor_keys(torch_optimizers[schema.registered_as])[0]


def test_trainer_schema_is_lightnings_signature():
    import pytorch_lightning as pl
    from pytorch_lightning.utilities import GradClipAlgorithmType

    params = inspect.signature(pl.Trainer.__init__).parameters
    assert set(Trainer.fields) == set(params) - {"self"}
    literals = set()
    for option in typing.get_args(params["precision"].annotation):
        literals |= set(typing.get_args(option))
    assert set(PRECISIONS) == literals
    assert set(Trainer.fields["gradient_clip_algorithm"].choices) == {a.value for a in GradClipAlgorithmType}
    from sparse_lab.experiment import RUN_TRAINER_ARGS as run_sets

    assert run_sets == RUN_TRAINER_ARGS


def test_allowed_values_are_the_modules_own():
    from sparse_lab.loggers import WANDB_MODES
    from sparse_lab.models import e3dsnn, sctn, stvit, vit
    from sparse_lab.schema.logger import Wandb
    from sparse_lab.sparsity import dynamic, lottery, masksparsity
    from sparse_lab.sparsity.distributions import DISTRIBUTIONS
    from sparse_lab.tasks.classification import OPTIMIZERS, SCHEDULES

    assert sparsity_schema.DISTRIBUTIONS == DISTRIBUTIONS
    assert sparsity_schema.Dynamic.fields["alpha_schedule"].choices == dynamic.ALPHA_SCHEDULES
    assert sparsity_schema.Lottery.fields["scope"].choices == lottery.SCOPES
    assert sparsity_schema.MaskSparsity.fields["target"].choices == masksparsity.TARGETS
    assert model_schema.SCHEDULES == SCHEDULES
    assert {s.registered_as for s in model_schema.OPTIMIZERS} == set(OPTIMIZERS)
    assert Wandb.fields["mode"].choices == WANDB_MODES
    assert model_schema.STViT.fields["pool"].choices == stvit.POOLS
    assert model_schema.STViT.fields["second_layer_keys"].choices == stvit.SECOND_LAYER_KEYS
    for schema, module in [
        (model_schema.ViT, vit),
        (model_schema.STViT, stvit),
        (model_schema.E3DSNN, e3dsnn),
        (model_schema.SCTN, sctn),
    ]:
        assert set(schema.fields["preset"].choices) == set(module.PRESETS), schema.registered_as


# -- bad values: one line naming the key, the value and what is allowed --------------------------------------
def put(config: dict, key: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value
    return config


BAD_VALUES = [
    ("data=digits", "data.image_size", -3, "data.image_size must be an integer >= 1, got -3"),
    ("data=digits", "data.in_chans", 1.5, "data.in_chans must be an integer >= 1, got 1.5"),
    ("data=digits", "data.split_seed", True, "data.split_seed must be an integer in [0, 4294967295], got true"),
    ("data=cifar10", "data.val_fraction", 1.0, "data.val_fraction must be a number in [0, 1), got 1.0"),
    ("data=cifar10", "data.augment", "yes", "data.augment must be true or false, got 'yes'"),
    ("data=imagefolder", "data.root", "", "data.root must be a non-empty string, got ''"),
    ("data=shapes3d", "data.voxel_size", 0, "data.voxel_size must be a number in (0, 1], got 0"),
    ("data=shapes3d", "data.scale_range", [0.9, 0.5], "data.scale_range must be [low, high] with low <= high"),
    ("data=shapes3d", "data.epoch_size", 0, "data.epoch_size must be an integer >= 1 or null, got 0"),
    ("data=flow3d", "data.num_points", 8, "data.num_points must be an integer >= 16, got 8"),
    ("data=flow3d", "data.sizes", [64, 32], "data.sizes must be a list of 3 integers >= 1, got [64, 32]"),
    ("data=flow3d", "data.num_objects", [5, 3], "data.num_objects must be [low, high] with low <= high"),
    ("data=moving_digits", "data.digit_size", 40, "data.digit_size must be <= data.image_size (32), got 40"),
    ("data=kitti_sf", "data.split", [0.5, 0.5, 0.0], "data.split must be three fractions >= 0 with a test part > 0"),
    ("data=modelnet40", "data.num_classes", 1, "data.num_classes must be an integer >= 2, got 1"),
    ("model=stvit", "model.stgm_at", -1, "model.stgm_at must be an integer >= 0 or null, got -1"),
    ("model=e3dsnn", "model.channels", [], "model.channels must be a non-empty list of integers >= 1 or null"),
    ("model=sctn", "model.channels", [8, 8], "model.channels must be a list of 3 integers >= 1 or null"),
    ("model=delta_cnn", "model.delta_step", 0, "model.delta_step must be a number > 0, got 0"),
    ("model=vit", "model.optim.label_smoothing", 1.0, "model.optim.label_smoothing must be a number in [0, 1)"),
    ("model=vit", "model.optim.optimizer.betas", [0.9], "model.optim.optimizer.betas must be a list of 2 numbers"),
    ("model=vit", "model.optim", None, "model.optim must be a mapping of keys, got null"),
    ("sparsity=gmp", "sparsity.end", 0.05, "sparsity.end must be >= sparsity.start (0.1), got 0.05"),
    ("sparsity=gmp", "sparsity.frequency", 0, "sparsity.frequency must be an integer >= 1, got 0"),
    ("sparsity=rigl", "sparsity.delta_t", 0, "sparsity.delta_t must be an integer >= 1, got 0"),
    ("sparsity=set", "sparsity.alpha_schedule", "linear", "unknown sparsity.alpha_schedule 'linear'; choose one"),
    ("sparsity=masksparsity", "sparsity.lam", -1, "sparsity.lam must be a number >= 0, got -1"),
    ("sparsity=masksparsity", "sparsity.round_to", 0, "sparsity.round_to must be an integer >= 1, got 0"),
    ("sparsity=nm", "sparsity.ramp_fraction", 2, "sparsity.ramp_fraction must be a number in [0, 1], got 2"),
    ("sparsity=lottery", "sparsity.reinit", 1, "sparsity.reinit must be true or false, got 1"),
    ("sparsity=random", "sparsity.exclude", "head", "sparsity.exclude must be a list of regular expressions"),
    ("sparsity=random", "sparsity.name", "rand", "unknown sparsity method 'rand'; did you mean 'random'?"),
    ("hardware=cpu", "hardware.energy_pj_per_sop", None, "hardware.energy_pj_per_sop must be a number >= 0, got null"),
    ("trainer=default", "trainer.devices", 0, "trainer.devices must be an integer >= 1, -1, a non-empty string or"),
    ("trainer=default", "trainer.num_sanity_val_steps", -2, "trainer.num_sanity_val_steps must be an integer >= -1"),
    ("trainer=default", "trainer.gradient_clip_val", -1.0, "trainer.gradient_clip_val must be a number >= 0 or null"),
    ("trainer=default", "trainer.deterministic", "sometimes", "trainer.deterministic must be true or false, warn or"),
    ("trainer=default", "trainer.profiler", "fancy", "unknown trainer.profiler 'fancy'; choose one of: simple"),
    ("trainer=default", "trainer.max_time", {"hours": -1}, "trainer.max_time.hours must be a number >= 0, got -1"),
    ("trainer=default", "trainer.max_time", {"hour": 1}, "trainer.max_time.hour is not a key of a duration"),
    ("trainer=default", "trainer.callbacks", [], "trainer.callbacks cannot be set: the run adds the sparsity"),
    ("logger=wandb", "logger.wandb.project", "", "logger.wandb.project must be a non-empty string, got ''"),
    ("logger=wandb", "logger.wandb.tags", "a,b", "logger.wandb.tags must be a list of non-empty strings,"),
    ("logger=csv", "logger.wandb", "on", "logger.wandb must be a mapping of keys or null, got 'on'"),
    ("paths=default", "paths.output_dir", None, "paths.output_dir must be a non-empty string, got null"),
    ("paths=default", "objectives", [], "objectives must be a non-empty string, a non-empty list of non-empty"),
    ("paths=default", "deploy.latency", "no", "deploy.latency must be true or false, got 'no'"),
    # from the CLI table (tests/test_bad_inputs.py), checked here without the round trip
    ("data=digits", "data.batch_size", 0, "data.batch_size must be an integer >= 1, got 0"),
    ("data=digits", "data.split", [0.5, 0.5], "data.split must be a list of 3 numbers in [0, 1], got [0.5, 0.5]"),
    ("data=digits", "data.num_workers", -1, "data.num_workers must be an integer >= 0, got -1"),
    ("data=shapes3d", "data.num_classes", 20, "data.num_classes must be an integer in [2, 12], got 20"),
    ("model=vit", "model.depth", 0, "model.depth must be an integer >= 1 or null, got 0"),
    ("model=mobilenet_v2", "model.dropout", 1.5, "model.dropout must be a number in [0, 1), got 1.5"),
    ("model=vit", "model.name", "vit_large", "unknown model 'vit_large'; choose one of: delta_cnn, e3dsnn,"),
    ("model=vit", "model.optim.schedule", "linear", "unknown model.optim.schedule 'linear'; choose one of:"),
    ("model=vit", "model.optim.optimizer.momentum", 0.9, "model.optim.optimizer.momentum is not a key of optimizer"),
    ("sparsity=dense", "sparsity.sparsity", 0.5, "sparsity.sparsity is not a key of sparsity method 'dense'"),
    ("sparsity=nm24", "sparsity.m", 0, "sparsity.m must be an integer >= 1, got 0"),
    ("sparsity=lottery", "sparsity.prune_rate", 1, "sparsity.prune_rate must be a number in [0, 1), got 1"),
    (
        "sparsity=lottery",
        "sparsity.scope",
        "local",
        "unknown sparsity.scope 'local'; did you mean 'global'? choose one of: global",
    ),
    ("sparsity=gmp", "sparsity.initial_sparsity", 0.9, "sparsity.initial_sparsity must be <= sparsity.sparsity"),
    ("sparsity=masksparsity", "sparsity.target", "params", "unknown sparsity.target 'params'; choose one of:"),
    ("hardware=edge_xnnpack", "hardware.min_sparsity", 1.5, "hardware.min_sparsity must be a number in [0, 1]"),
    ("trainer=default", "trainer.limit_train_batches", 1.5, "trainer.limit_train_batches must be an integer >= 0,"),
    ("logger=csv", "logger.csv", "maybe", "logger.csv must be true or false, got 'maybe'"),
    ("paths=default", "threads", 0, "threads must be an integer >= 1 or null, got 0"),
    ("paths=default", "sede", 1, "sede is not a key of the config; did you mean seed?"),
    ("data=warped_digits", "data.test_forms", 13, "data.test_forms must be an integer in [1, 12], got 13"),
]


@pytest.mark.parametrize("option, key, value, message", BAD_VALUES, ids=[f"{k}={show(v)}" for _, k, v, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(option, key, value, message, configs):
    with pytest.raises(SchemaError) as info:
        validate_config(put(configs[option], key, value))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_rules_between_keys(configs):
    e3dsnn = put(put(configs["model=e3dsnn"], "model.channels", [8, 16]), "model.depths", [1, 1, 1])
    with pytest.raises(SchemaError, match=r"model.channels and model.depths must have the same length .* got 2 and 3"):
        validate_config(e3dsnn)
    warped = put(put(configs["data=warped_digits"], "data.val_forms", 6), "data.test_forms", 8)
    with pytest.raises(SchemaError, match="data.val_forms \\+ data.test_forms must leave forms to train on"):
        validate_config(warped)


def test_a_missing_data_folder_is_found_before_anything_is_built(configs, tmp_path):
    cifar = put(configs["data=cifar10"], "data.data_dir", str(tmp_path))
    assert validate_config(cifar) == []  # a profile needs no files
    with pytest.raises(SchemaError, match=f"cifar10 not found: missing {tmp_path}/cifar-10-batches-py"):
        validate_config(cifar, data_files=True)
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert validate_config(cifar, data_files=True) == []


def test_endless_epochs_are_legal_with_a_step_limit(configs):
    config = put(put(configs["trainer=default"], "trainer.max_epochs", -1), "trainer.max_steps", 500)
    assert validate_config(config) == []


@pytest.mark.parametrize(
    "option, key, value, warning",
    [
        ("sparsity=random", "sparsity.sparsity", 0.0, "sparsity.sparsity=0 makes random prune nothing"),
        ("sparsity=rigl", "sparsity.sparsity", 0, "sparsity.sparsity=0 makes rigl prune nothing"),
        ("sparsity=gmp", "sparsity.sparsity", 0, "sparsity.sparsity=0 makes gmp prune nothing"),
        ("sparsity=lottery", "sparsity.prune_rate", 0, "sparsity.prune_rate=0: lottery's rounds prune nothing"),
        ("sparsity=masksparsity", "sparsity.ratio", 0, "sparsity.ratio=0: masksparsity removes no channel"),
        ("sparsity=nm24", "sparsity.n", 4, "sparsity.n=4 = sparsity.m: N:M keeps every weight"),
        ("sparsity=rigl", "sparsity.alpha", 0, "sparsity.alpha=0: rigl never updates its masks"),
        ("sparsity=set", "sparsity.end_fraction", 0, "sparsity.end_fraction=0: set never updates its masks"),
        ("trainer=default", "trainer.limit_train_batches", 0, "trainer.limit_train_batches=0: the run trains nothing"),
    ],
)
def test_a_legal_value_that_does_nothing_is_a_warning(option, key, value, warning, configs):
    found = validate_config(put(configs[option], key, value))
    assert len(found) == 1 and found[0].startswith(warning)


# -- plug-ins: their own keys are their business -------------------------------------------------------------
def test_a_plugin_config_is_checked_only_on_the_projects_keys(configs):
    config = copy.deepcopy(configs["data=digits"])
    config["data"] = {"_target_": "my_data.Stripes", "num_classes": 4, "anything": [1, 2]}
    config["model"] = {"_target_": "my_models.TinyCNN", "width": 16}
    config["sparsity"] = {"_target_": "my_methods.MagnitudeAtInit", "sparsity": 0.7, "my_knob": "x"}
    config["hardware"] = {"_target_": "my_targets.MyNPU", "energy_pj_per_mac": 0.3, "lanes": 8}
    assert validate_config(config) == []  # no modality is known for plug-ins: the run checks it
    for key, value, message in [
        ("sparsity.sparsity", 1.2, "sparsity.sparsity must be a number in [0, 1), got 1.2"),
        ("sparsity.distribution", "gaussian", "unknown sparsity.distribution 'gaussian'"),
        ("hardware.energy_pj_per_mac", -0.3, "hardware.energy_pj_per_mac must be a number >= 0"),
        ("model.optim", {"optimizer": {"name": "adamw", "lr": -1}}, "model.optim.optimizer.lr must be a number > 0"),
        ("data._target_", "", "data._target_ must be an importable path"),
    ]:
        with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            validate_config(put(config, key, value))


PLUGIN_SCHEMA = """
from sparse_lab.schema import Choice, Int, Schema


class TinyCNN(Schema):
    owner = "model 'tiny_cnn'"
    width = Int(ge=1)
    activation = Choice("relu", "gelu")
"""


def test_a_plugin_declares_its_own_keys_with_schema(configs, tmp_path, monkeypatch):
    (tmp_path / "my_schemas_for_test.py").write_text(PLUGIN_SCHEMA)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = copy.deepcopy(configs["data=digits"])
    config["model"] = {
        "_target_": "my_models.TinyCNN",
        "_schema_": "my_schemas_for_test.TinyCNN",
        "width": 16,
        "activation": "relu",
        "optim": {"optimizer": {"name": "sgd", "lr": 0.1}},  # the project's key: checked by the project's schema
    }
    assert validate_config(config) == []
    for key, value, message in [
        ("model.width", 0, "model.width must be an integer >= 1, got 0"),
        ("model.activation", "tanh", "unknown model.activation 'tanh'; choose one of: relu, gelu"),
        ("model.widht", 16, "model.widht is not a key of model 'tiny_cnn'; did you mean model.width?"),
        ("model.optim.optimizer.lr", 0, "model.optim.optimizer.lr must be a number > 0, got 0"),
        ("model._schema_", "nowhere.Keys", "model._schema_ 'nowhere.Keys' cannot be imported"),
        (
            "model._schema_",
            "copy.deepcopy",
            "model._schema_ 'copy.deepcopy' is not a sparse_lab.schema.Schema subclass",
        ),
    ]:
        with pytest.raises(SchemaError) as info:
            validate_config(put(config, key, value))
        assert message in str(info.value)


def test_the_registries_do_not_pass_schema_on_to_the_constructor():
    from sparse_lab.hardware import TARGETS

    target = TARGETS.from_config({"name": "cpu", "_schema_": "x.Y", "energy_pj_per_mac": 1.0, "energy_pj_per_sop": 1.0})
    assert target.energy_pj_per_mac == 1.0


def test_the_readme_plugin_configs_validate(tmp_path):
    from tests.test_plugins import readme_example

    files, _ = readme_example()
    for path, text in files.items():
        if path.endswith(".yaml"):
            group = Path(path).parent.name
            Config.fields[group].validate(group, yaml.safe_load(text))


# -- messages ------------------------------------------------------------------------------------------------
def test_suggestions_for_mistyped_keys():
    assert suggest_key("sparsity.sparsty") == "sparsity.sparsity"
    assert suggest_key("data.batchsize") == "data.batch_size"
    assert suggest_key("model.optim.optimizer.lrr") == "model.optim.optimizer.lr"
    assert suggest_key("trainer.max_epoch") == "trainer.max_epochs"
    assert suggest_key("sed") == "seed"
    assert suggest_key("completely.different") is None
    assert unknown_override("Could not override 'sed'.", "To append to your config use +sed=1") == (
        "Could not override 'sed': no such config key; did you mean seed? (to append to your config use +sed=1)"
    )


def test_values_are_shown_as_written():
    assert [show(v) for v in ("abc", True, None, 1.5, 3, [0.5, "x"], {"a": 1})] == [
        "'abc'",
        "true",
        "null",
        "1.5",
        "3",
        "[0.5, 'x']",
        "{a: 1}",
    ]
