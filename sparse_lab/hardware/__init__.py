"""Hardware targets: cost models (which zeros a target's kernels skip, what an operation costs) and the
Lightning accelerator a run uses. Counting and timing live in ``sparse_lab.measure``."""

from __future__ import annotations

from sparse_lab import measure
from sparse_lab.hardware.lookup import load_target
from sparse_lab.hardware.targets import TARGETS, HardwareTarget
from sparse_lab.registry import import_submodules

__all__ = ["TARGETS", "HardwareTarget", "count_macs", "load_target"]

import_submodules(__name__)  # each target module registers its targets


def count_macs(model, example_input, target: str | HardwareTarget):
    """MACs of ``model`` for one sample (``example_input``, batch size 1) with ``.target`` the MACs that
    ``target`` (a built-in name such as ``"ampere_2to4"``, or a target) executes."""
    if isinstance(target, str):
        target = load_target(target)
    return measure.count_macs(model, example_input, executed=target.executed_macs)
