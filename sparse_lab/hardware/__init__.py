"""Hardware targets: cost models (which zeros a target's kernels skip, what an operation costs) and the
Lightning accelerator a run uses. Counting and timing live in ``sparse_lab.measure``."""

from sparse_lab.hardware.targets import TARGETS, HardwareTarget  # noqa: F401  (re-exported)
from sparse_lab.registry import import_submodules

import_submodules(__name__)  # each target module registers its targets
