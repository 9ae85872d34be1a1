"""Hardware targets: cost models (which zeros a target's kernels skip, what an operation costs) and the
Lightning accelerator a run uses. Counting and timing live in ``sparse_lab.measure``."""
