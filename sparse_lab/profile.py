"""`sparse-lab profile`: what a model costs on a hardware target, per layer, without training.

Two sources:

- a configuration (``sparse-lab profile model=vit model.preset=vit_b16 data.image_size=224``): the model
  is built exactly as `sparse-lab train` would build it, with freshly initialised weights and the masks
  its sparsity method sets before training (e.g. ``sparsity=random``'s; a method that prunes while it
  trains starts dense);
- a trained run (``sparse-lab profile run=<run dir> [hardware=<target>]``): its deployed program
  (``deployed.pt2``, a torch.export program), measured on any target.

The example input is the data's (one sample); the target decides what each layer's MACs cost there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from sparse_lab.errors import UserError

if TYPE_CHECKING:
    import torch

# Sizes a profile may set although the data config has no such key (the model is never trained on it).
SIZE_OVERRIDES = ("data.num_classes",)


def split_overrides(overrides: list[str]) -> tuple[str | None, dict[str, int], list[str]]:
    """(run directory, size overrides, the rest for Hydra)."""
    run_dir, sizes, rest = None, {}, []
    for arg in overrides:
        key, _, value = arg.partition("=")
        if key == "run":
            run_dir = value
        elif key in SIZE_OVERRIDES:
            try:
                sizes[key.split(".", 1)[1]] = int(value)
            except ValueError:
                raise UserError(f"{key} must be an integer, got {value!r}") from None
        else:
            rest.append(arg)
    return run_dir, sizes, rest


def compose(config_dir: Path, overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(config_dir), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def profile(config_dir: Path, overrides: list[str]) -> dict:
    """The profile of the model a configuration (or a run) names, on the configured target."""
    from sparse_lab.schema import SchemaError, check_config, validate_config

    run_dir, sizes, rest = split_overrides(overrides)
    if run_dir is not None:
        cfg = run_config(Path(run_dir))
        chosen = [arg for arg in rest if arg.split("=", 1)[0].lstrip("+~") in ("hardware", "hydra.searchpath")]
        if chosen:  # profile the run's model on another target
            cfg.hardware = compose(config_dir, chosen).hardware
        try:
            validate_config(cfg, groups=("data", "hardware"))  # what a profile of a run reads
        except SchemaError as exc:
            raise SchemaError(f"{Path(run_dir) / 'results.json'} records a config sparse-lab refuses: {exc}") from None
    else:
        cfg = compose(config_dir, rest)
        check_config(cfg, data_files=False)  # every key, before torch is imported (sparse_lab/schema)
    import torch

    from sparse_lab.data import DATASETS
    from sparse_lab.experiment import check_datamodule, options
    from sparse_lab.hardware import TARGETS
    from sparse_lab.models import model_from_config
    from sparse_lab.registry import component_name
    from sparse_lab.sparsity import METHODS

    target = TARGETS.from_config(options(cfg.hardware))
    datamodule = DATASETS.from_config(options(cfg.data))
    info = check_datamodule(datamodule)
    if sizes:
        info = type(info)(info.modality, sizes.get("num_classes", info.num_classes), info.task, info.sizes)
    example = datamodule.example_input()
    if run_dir is not None:
        model, source = load_deployed(Path(run_dir)), f"run {run_dir} (deployed.pt2)"
    else:
        torch.manual_seed(int(cfg.seed))
        model, source = model_from_config(options(cfg.model, drop=("optim",)), info), "configuration"
        METHODS.from_config(options(cfg.sparsity)).attach(model, seed=int(cfg.seed), example_input=example)
    metrics, layers = target.profile(model.eval(), example)  # what a run reports (SOPs on neuromorphic too)
    return {"source": source, "model": component_name(cfg.model), "hardware": target.name, **metrics, "layers": layers}


def run_config(run_dir: Path) -> DictConfig:
    """The resolved configuration a run recorded in its results.json."""
    results = run_dir / "results.json"
    if not results.is_file():
        raise UserError(f"{run_dir} has no results.json: not a sparse-lab run directory")
    try:
        config = json.loads(results.read_text())["config"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{results} is not a sparse-lab results file (unreadable or without a config)") from None
    missing = [
        group
        for group in ("data", "model", "hardware")
        if not isinstance(config, dict) or not isinstance(config.get(group), dict)
    ]
    if missing:
        raise UserError(f"{results} is not a sparse-lab results file (its config has no {missing[0]} section)")
    if not (run_dir / "deployed.pt2").is_file():
        raise UserError(f"{run_dir} holds no deployed.pt2 (the run did not complete, or its model is not exportable)")
    return OmegaConf.create(config)


def load_deployed(run_dir: Path) -> torch.nn.Module:
    """The run's deployed program with its module hierarchy restored (so MACs are attributed to layers)."""
    import logging

    import torch

    export_log = logging.getLogger("torch.export")
    level, export_log.level = export_log.level, logging.ERROR  # it logs a failed load's traceback as a warning
    try:
        program = torch.export.load(str(run_dir / "deployed.pt2"))
    except Exception as exc:  # a truncated or foreign file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not reason or "warnings above" in reason:  # torch's pointer to the log this function silences
            reason = "not a torch.export archive"
        raise UserError(
            f"{run_dir / 'deployed.pt2'} cannot be loaded: {type(exc).__name__}: {reason} "
            "(a truncated copy, or not a program sparse-lab exported)"
        ) from None
    finally:
        export_log.setLevel(level)
    return torch.export.unflatten(program)


def format_profile(result: dict) -> str:
    """A rich table of the layers and the totals, as text."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['model']} on {result['hardware']} ({result['source']})")
    for column in ("layer", "kind", "MACs dense", "MACs effective", "MACs on target"):
        table.add_column(column, justify="left" if column in ("layer", "kind") else "right")
    for row in result["layers"]:
        table.add_row(
            row["name"] or "(model)",
            row["kind"],
            f"{row['macs_dense']:,}",
            f"{row['macs_effective']:,}",
            f"{row['macs_target']:,}",
        )
    table.add_section()
    table.add_row(
        "total", "", f"{result['macs/dense']:,}", f"{result['macs/effective']:,}", f"{result['macs/target']:,}"
    )
    console = Console(width=120)
    with console.capture() as captured:
        console.print(table)
        console.print(
            f"{in_units(result['macs/dense'])} dense, {in_units(result['macs/target'])} on {result['hardware']}; "
            f"energy {result['energy/uJ']:.2f} µJ; parameters {result['params/total']:,} "
            f"({result['params/nonzero']:,} nonzero)"
        )
    return captured.get()


def in_units(macs: int) -> str:
    return f"{macs / 1e9:.2f} GMACs" if macs >= 1e9 else f"{macs / 1e6:.2f} MMACs"


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2)
