"""The config catalog read straight from the YAML files (no Hydra, no torch): what `sparse-lab list`
prints, and the check that an override names an existing option of its group. Hydra's own groups
(``hydra/launcher``, ``hydra/sweeper``, ...) also hold the options its installed plugins register in
code; those are read from the plugins' source (``plugin_options``), still without importing Hydra.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
from functools import cache
from pathlib import Path

from sparse_lab.errors import UserError

HIDDEN_GROUPS = {"hydra", "paths"}
GROUP_OVERRIDE = re.compile(r"^[+~]?([A-Za-z_][\w/]*)(@[\w.]+)?=(.*)$")
# Hydra's groups that `sparse-lab list` prints (how a sweep runs); every hydra/* group is checked.
LISTED_HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")
HYDRA_DEFAULTS = {"hydra/launcher": "basic", "hydra/sweeper": "basic"}  # Hydra's own defaults list
# What the well-known plugin options are, for `list` (which options exist is read from the installed
# plugins, not from here; an unknown plugin's option is listed with the plugin that provides it).
PLUGIN_DESCRIPTIONS = {
    ("hydra/launcher", "basic"): "Hydra's default: the jobs of a sweep one after the other, in this process.",
    ("hydra/launcher", "joblib"): "Parallel jobs on this machine (hydra-joblib-launcher): hydra.launcher.n_jobs"
    " at once (default -1 = one per core), cores // n_jobs torch threads each.",
    ("hydra/launcher", "submitit_local"): "Each job a local subprocess through submitit (a dry run of SLURM"
    " submission; all jobs at once).",
    ("hydra/launcher", "submitit_slurm"): "Each job a SLURM job through submitit (hydra-submitit-launcher);"
    " see hydra/launcher=slurm for the documented keys.",
    ("hydra/sweeper", "basic"): "Hydra's default: every combination of comma-separated values (seed=0,1,2).",
    ("hydra/sweeper", "optuna"): "Optuna search (hydra-optuna-sweeper); the job returns the metrics named by"
    " `objectives` (example: experiment=optuna_sparsity_lr).",
}


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


def _store_calls(path: Path) -> list[tuple[str, str, str]]:
    """``(group, name, provider)`` of each ``ConfigStore...store(group=..., name=...)`` call with literal
    arguments in a Python source file."""
    text = path.read_text(errors="replace")
    if ".store(" not in text:
        return []
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "store":
            args = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
            if isinstance(args.get("group"), str) and isinstance(args.get("name"), str):
                found.append((args["group"], args["name"], str(args.get("provider", path.parent.name))))
    return found


@cache
def plugin_options() -> dict[str, dict[str, str]]:
    """``{group: {option: provider}}`` for the options that Hydra's core plugins and every installed
    plugin (the ``hydra_plugins`` namespace package, where Hydra looks for them) register in code.

    Hydra finds these by importing every plugin module; reading their source instead keeps `sparse-lab
    list` instant. tests/test_launchers.py checks the result against Hydra's own config repository.
    """
    sources: list[Path] = []
    hydra_spec = importlib.util.find_spec("hydra")  # finds, does not import
    if hydra_spec and hydra_spec.submodule_search_locations:
        for root in hydra_spec.submodule_search_locations:
            sources += sorted((Path(root) / "_internal" / "core_plugins").glob("*.py"))
    plugins_spec = importlib.util.find_spec("hydra_plugins")
    if plugins_spec and plugins_spec.submodule_search_locations:
        for root in plugins_spec.submodule_search_locations:
            sources += sorted(Path(root).glob("*.py")) + sorted(Path(root).glob("*/*.py"))
    found: dict[str, dict[str, str]] = {}
    for source in sources:
        for group, name, provider in _store_calls(source):
            if group.startswith("hydra/"):
                found.setdefault(group, {})[name] = provider
    return found


def hydra_groups(config_dir: Path, extra_dirs: list[Path] = ()) -> dict[str, dict[str, str]]:
    """Hydra's own groups (``hydra/launcher``, ``hydra/sweeper``, ``hydra/sweeper/sampler``, ...): the
    plugins' options and the YAML files under ``<config dir>/hydra/<group>/``, as ``{group: {option:
    description}}``."""
    found = {
        group: {
            name: PLUGIN_DESCRIPTIONS.get((group, name), f"provided by the {provider} plugin")
            for name, provider in options.items()
        }
        for group, options in plugin_options().items()
    }
    for root in [config_dir, *extra_dirs]:
        base = Path(root) / "hydra"
        for path in sorted(base.glob("**/*.yaml")) if base.is_dir() else []:
            if path.parent != base:
                group = "hydra/" + path.parent.relative_to(base).as_posix()
                found.setdefault(group, {})[path.stem] = description(path)
    return {group: dict(sorted(options.items())) for group, options in sorted(found.items())}


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
    hydra = hydra_groups(config_dir, extra_dirs)
    for group in LISTED_HYDRA_GROUPS:
        options = hydra.get(group, {})
        if not options:
            continue
        out.append(f"{group}:  (how a sweep runs: sparse-lab train -m {group}=<option> ...)")
        width = max(len(o) for o in options)
        for option, text in options.items():
            mark = "*" if HYDRA_DEFAULTS.get(group) == option else " "
            out.append(f"  {mark} {option:<{width}}  {text}")
        out.append("")
    out.append(
        "* = default. Choose with `sparse-lab train <group>=<option>`; see each file under configs/ for its keys.\n"
    )
    return "\n".join(out)


def check_group_choices(config_dir: Path, overrides: list[str]) -> None:
    """Reject ``group=option`` overrides naming an option that does not exist (sweeps: each value)."""
    extra = search_path_dirs(overrides)
    available = groups(config_dir, extra)
    available.update((group, list(options)) for group, options in hydra_groups(config_dir, extra).items())
    for arg in overrides:
        match = GROUP_OVERRIDE.match(arg)
        if not match or match.group(1) not in available or arg.startswith("~"):
            continue
        group, value = match.group(1), match.group(3)
        if "(" in value or value == "null":  # sweep functions (range(), choice()) are Hydra's to check
            continue
        for option in value.split(","):
            if option not in available[group]:
                raise UserError(unknown_option(group, repr(option), available[group]))


def unknown_option(kind: str, shown: str, choices) -> str:
    """``unknown model 'vitt'; did you mean 'vit'? choose one of: ...`` (``shown``: the value as written)."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(shown.strip("'\""), choices, n=1, cutoff=0.6)
    hint = f" did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {shown};{hint} choose one of: {', '.join(choices)}"
