"""A built-in target from its name alone, for measuring a model without a run (no Hydra composition)."""

from __future__ import annotations

import yaml

from sparse_lab.errors import UserError
from sparse_lab.hardware.targets import TARGETS, HardwareTarget


def load_target(name: str, **overrides) -> HardwareTarget:
    """The registered target ``name`` with the prices (and other keys) of ``configs/hardware/<name>.yaml``;
    ``overrides`` replace config keys, as ``hardware.<key>=...`` would on the command line."""
    from sparse_lab.cli import CONFIG_DIR  # the package's configs; cli imports nothing heavy

    TARGETS.get(name)  # an unknown name is the registry's one-line error, with a suggestion
    path = CONFIG_DIR / "hardware" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"hardware target {name} has no config {path} (its prices live there)")
    options = yaml.safe_load(path.read_text()) or {}
    return TARGETS.from_config({**options, **overrides, "name": name})
