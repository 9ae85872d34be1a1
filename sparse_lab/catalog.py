"""The config catalog read straight from the YAML files (no Hydra, no torch): what `sparse-lab list`
prints, and the check that an override names an existing option of its group.
"""

from __future__ import annotations

import re
from pathlib import Path

from sparse_lab.errors import UserError

HIDDEN_GROUPS = {"hydra", "paths"}
GROUP_OVERRIDE = re.compile(r"^[+~]?([A-Za-z_][\w/]*)(@[\w.]+)?=(.*)$")


def groups(config_dir: Path) -> dict[str, list[str]]:
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(config_dir.iterdir())
        if d.is_dir()
    }


def description(path: Path) -> str:
    """The first comment line of a config that is not a Hydra directive."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("#").strip()
        if line and not line.startswith("#"):
            break
    return ""


def defaults(config_dir: Path) -> dict[str, str]:
    chosen = {}
    for line in (config_dir / "config.yaml").read_text().splitlines():
        match = re.match(r"^\s*-\s*(\w+):\s*(\w+)", line)
        if match:
            chosen[match.group(1)] = match.group(2)
    return chosen


def format_catalog(config_dir: Path) -> str:
    default = defaults(config_dir)
    out = []
    for group, options in groups(config_dir).items():
        if group in HIDDEN_GROUPS:
            continue
        out.append(f"{group}:")
        width = max(len(o) for o in options)
        for option in options:
            mark = "*" if default.get(group) == option else " "
            out.append(f"  {mark} {option:<{width}}  {description(config_dir / group / (option + '.yaml'))}")
        out.append("")
    out.append("* = default. Choose with `sparse-lab train <group>=<option>`; see each file under configs/ for its keys.\n")
    return "\n".join(out)


def check_group_choices(config_dir: Path, overrides: list[str]) -> None:
    """Reject ``group=option`` overrides naming an option that does not exist (sweeps: each value)."""
    available = groups(config_dir)
    for arg in overrides:
        match = GROUP_OVERRIDE.match(arg)
        if not match or match.group(1) not in available or arg.startswith("~"):
            continue
        group, value = match.group(1), match.group(3)
        if "(" in value or value == "null":  # sweep functions (range(), choice()) are Hydra's to check
            continue
        for option in value.split(","):
            if option not in available[group]:
                raise UserError(f"unknown {group} {option!r}; choose one of: {', '.join(available[group])}")
