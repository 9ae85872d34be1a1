"""Every config key validated before anything heavy starts: types, ranges, allowed values, unknown keys.

``configs/`` mirrors this package: ``schema/data.py`` declares the keys of ``configs/data/*.yaml``, and so on
for model (with ``model.optim``), sparsity, hardware, trainer and logger; the top-level keys are here. A
group's config is checked against the schema of the component its ``name:`` names; a plug-in's config
(``_target_:``) only on the keys the project itself reads. ``check_config`` runs right after Hydra
composes the config (``cli.train_job``, ``profile``), before torch is imported: a bad value is one line
naming the key, the value and what is allowed (exit code 2), and a legal value that makes a component do
nothing is a printed warning. The components' own checks stay as a second line of defence.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sparse_lab.schema.data import DATASETS, DataPlugin
from sparse_lab.schema.fields import (
    REMOVED,
    Any_,
    Bool,
    Choice,
    Choose,
    Float,
    Int,
    List,
    Regex,
    Schema,
    SchemaError,
    Section,
    Str,
    Union,
    closest,
    validate_mapping,
)
from sparse_lab.schema.hardware import TARGETS, TargetPlugin
from sparse_lab.schema.logger import Logger
from sparse_lab.schema.model import MODELS, ModelPlugin
from sparse_lab.schema.sparsity import METHODS, SparsityPlugin
from sparse_lab.schema.trainer import Trainer

__all__ = [  # the field types, for a plug-in's schema (docs/extending.md), and the checks
    "REMOVED",
    "Any_",
    "Bool",
    "Choice",
    "Config",
    "Float",
    "Int",
    "List",
    "Regex",
    "Schema",
    "SchemaError",
    "Section",
    "Str",
    "Union",
    "check_config",
    "suggest_key",
    "unknown_override",
    "validate_config",
]


class Deploy(Schema):
    """``deploy``: after training (sparse_lab/hardware/deploy.py)."""

    export = Bool()
    latency = Bool()


class Paths(Schema):
    """``paths``: where data is read from and runs are written to."""

    data_dir = Str()
    output_dir = Str()


class Config(Schema):
    """The composed config (configs/config.yaml and its groups)."""

    owner = "the config"
    seed = Int(ge=0, le=2**32 - 1)  # seed_everything's range
    data = Choose("dataset", DATASETS, plugin=DataPlugin)
    model = Choose("model", MODELS, plugin=ModelPlugin)
    sparsity = Choose("sparsity method", METHODS, plugin=SparsityPlugin)
    hardware = Choose("hardware target", TARGETS, plugin=TargetPlugin)
    trainer = Section(Trainer)
    logger = Section(Logger)
    paths = Section(Paths)
    deploy = Section(Deploy)
    threads = Int(ge=1, nullable=True)  # sparse_lab/launch.py
    resume = Str(nullable=True)  # a run directory to continue (sparse_lab/resume.py)
    skip_completed = Bool()  # sparse_lab/skip.py
    objectives = Union(Str(), List(Str(), min_length=1), nullable=True)  # metrics a searching sweeper optimises

    @classmethod
    def check(cls, values, at):
        data, model = values.get("data"), values.get("model")
        if isinstance(data, dict) and isinstance(model, dict):
            check_modality(schema_of("data", data), schema_of("model", model), model)


def schema_of(group: str, values: dict) -> type[Schema]:
    """The schema a (valid) group config is checked against."""
    return Config.fields[group].schema_for(group, values)


def check_modality(data: type[Schema], model: type[Schema], model_values: dict) -> None:
    """A model on a dataset of another modality: the same message as models.check_modality, earlier."""
    wanted, given = getattr(model, "modality", None), getattr(data, "modality", None)
    if wanted is None or given is None or wanted == given:
        return
    example = getattr(model, "default_data", None)
    raise SchemaError(
        f"model {model_values.get('name')!r} takes {wanted} input but the data gives {given}; "
        f"pick a {wanted} dataset" + (f" (e.g. data={example})" if example else "")
    )


def as_dict(cfg: Any) -> dict:
    """A plain, resolved dict of a DictConfig (or a dict)."""
    if isinstance(cfg, dict):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def validate_config(cfg: Any, *, groups: tuple[str, ...] | None = None, data_files: bool = False) -> list[str]:
    """Check ``cfg`` against the schema; raise a SchemaError (one line) at the first bad key, return the
    warnings. ``groups``: only these top-level keys (a run's recorded config, for ``profile run=``);
    ``data_files``: also check that a real dataset's folders exist (a run reads them, a profile may not)."""
    values = as_dict(cfg)
    if groups is not None:
        values = {key: values[key] for key in groups if key in values}
        warnings: list[str] = []
        for key, value in values.items():
            warnings += Config.fields[key].validate(key, value)
    else:
        warnings = validate_mapping(Config, values, "")
    if data_files and isinstance(values.get("data"), dict):
        schema_of("data", values["data"]).check_files(values["data"])
    return warnings


def check_config(cfg: Any, run_dir: Path | None = None, *, data_files: bool = True) -> None:
    """``validate_config`` for a run: warnings printed on stderr; a bad config raised as a SchemaError after
    recording it in ``run_dir``'s results.json (a sweep's jobs report failures there)."""
    try:
        warnings = validate_config(cfg, data_files=data_files)
    except SchemaError as exc:
        if run_dir is not None and not (Path(run_dir) / "results.json").exists():  # a resumed run's stays
            from sparse_lab.results import RunResults

            RunResults(Path(run_dir), as_dict(cfg)).finish("failed", error=str(exc))
        raise
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def suggest_key(key: str) -> str | None:
    """The dotted key a mistyped one (``sparsity.sparsty``) most likely meant, or None."""
    parts, schema_keys, found = key.split("."), Config.fields, []
    for i, part in enumerate(parts):
        if part in schema_keys:
            match = part
        elif i == len(parts) - 1 and (near := closest(part, schema_keys)):
            match = near
        else:
            return None
        found.append(match)
        field = schema_keys[match]
        schema_keys = field.keys() if hasattr(field, "keys") else {}
    return ".".join(found) if found != parts else None


def unknown_override(message: str, hint: str) -> str:
    """Hydra's "Could not override 'x'." plus its "To append ..." hint, as one line with a suggestion."""
    import re

    match = re.match(r"Could not override '([^']+)'", message)
    near = suggest_key(match.group(1)) if match else None
    did_you_mean = f"; did you mean {near}?" if near else ""
    return f"{message.rstrip('.')}: no such config key{did_you_mean} ({hint[0].lower()}{hint[1:]})"
