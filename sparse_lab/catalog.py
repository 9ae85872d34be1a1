"""The config catalog read straight from the YAML files (no Hydra, no torch): what `sparse-lab list`
prints, and the check that an override names an existing option of its group.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from sparse_lab.errors import UserError

HIDDEN_GROUPS = {"hydra", "paths"}
GROUP_OVERRIDE = re.compile(r"^[+~]?([A-Za-z_][\w/]*)(@[\w.]+)?=(.*)$")


def groups(config_dir: Path, extra_dirs: list[Path] = ()) -> dict[str, list[str]]:
    """Every group's options: the package's configs plus those of folders on Hydra's search path."""
    found: dict[str, set[str]] = {}
    for root in [config_dir, *extra_dirs]:
        for d in sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []:
            found.setdefault(d.name, set()).update(p.stem for p in d.glob("*.yaml"))
    return {group: sorted(options) for group, options in sorted(found.items())}


def search_path_dirs(overrides: list[str]) -> list[Path]:
    """Local folders named by a ``hydra.searchpath=[file://DIR, ...]`` override (``pkg://`` ones are skipped)."""
    dirs = []
    for arg in overrides:
        key, _, value = arg.lstrip("+").partition("=")
        if key != "hydra.searchpath":
            continue
        for item in value.strip("[]").split(","):
            item = item.strip().strip("'\"")
            if item.startswith("file://"):
                dirs.append(Path(item[len("file://") :]))
    return dirs


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


def format_catalog(config_dir: Path, extra_dirs: list[Path] = ()) -> str:
    default = defaults(config_dir)
    roots = [config_dir, *extra_dirs]
    out = []
    for group, options in groups(config_dir, extra_dirs).items():
        if group in HIDDEN_GROUPS:
            continue
        out.append(f"{group}:")
        width = max(len(o) for o in options)
        for option in options:
            mark = "*" if default.get(group) == option else " "
            path = next(p for root in roots if (p := Path(root) / group / f"{option}.yaml").is_file())
            out.append(f"  {mark} {option:<{width}}  {description(path)}")
        out.append("")
    out.append(
        "* = default. Choose with `sparse-lab train <group>=<option>`; see each file under configs/ for its keys.\n"
    )
    return "\n".join(out)


def check_group_choices(config_dir: Path, overrides: list[str]) -> None:
    """Reject ``group=option`` overrides naming an option that does not exist (sweeps: each value)."""
    available = groups(config_dir, search_path_dirs(overrides))
    for arg in overrides:
        match = GROUP_OVERRIDE.match(arg)
        if not match or match.group(1) not in available or arg.startswith("~"):
            continue
        group, value = match.group(1), match.group(3)
        if "(" in value or value == "null":  # sweep functions (range(), choice()) are Hydra's to check
            continue
        for option in value.split(","):
            if option not in available[group]:
                close = difflib.get_close_matches(option, available[group], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(f"unknown {group} {option!r}{hint}; choose one of: {', '.join(available[group])}")
